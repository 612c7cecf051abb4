"""Turn a model's reply into a policy file: a whole file in a fence, or SEARCH/REPLACE edits.

Models are sloppy in predictable ways (wrong indentation in a SEARCH block, trailing spaces,
blank lines dropped, the edits wrapped in a fence, a draft followed by the final version, a
reasoning section before the answer, no fence at all), so parsing is tolerant where the intent
is unambiguous and strict where it is not: an edit that matches nowhere, or in more than one
place, is refused with a reason the model can act on, never guessed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from autotuner.policy import PARSE_LOCK

# Reasoning models served by vLLM/Ollama/llama.cpp often inline their scratchpad; drafts in it
# must not be mistaken for the answer.
_THINK_RE = re.compile(r"<(think|thinking|reasoning)>.*?(</\1>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+-]*)[^\n]*$", re.MULTILINE)
_SEARCH_RE = re.compile(r"^[ \t]*<{5,9}[ \t]*SEARCH\b.*$", re.MULTILINE)
_DIVIDER_RE = re.compile(r"^[ \t]*={5,9}[ \t]*$")
_REPLACE_RE = re.compile(r"^[ \t]*>{5,9}[ \t]*REPLACE\b.*$")
_PY_LANGS = {"", "python", "py", "python3", "py3"}
_POLICY_DEF_RE = re.compile(r"^def[ \t]+(partition|route)[ \t]*\(", re.MULTILINE)
_TUNABLES_RE = re.compile(r"^TUNABLES[ \t]*(:[^=]*)?=", re.MULTILINE)
UNCHANGED = "reply leaves the parent unchanged"


@dataclass(frozen=True)
class Edit:
    search: str
    replace: str


class EditError(ValueError):
    """An edit that cannot be applied; the message is the reason shown to the model."""


def strip_reasoning(reply: str) -> str:
    """Drop <think>...</think> sections (and an unclosed one running to the end)."""
    return _THINK_RE.sub("", reply)


def code_blocks(text: str) -> list[tuple[str, str, bool]]:
    """Fenced blocks as (language, body, closed). An unclosed last fence runs to the end."""
    blocks: list[tuple[str, str, bool]] = []
    matches = list(_FENCE_RE.finditer(text))
    i = 0
    while i < len(matches):
        opening = matches[i]
        fence, lang = opening.group(1), opening.group(2).lower()
        body_start = opening.end() + 1
        closing = None
        for j in range(i + 1, len(matches)):
            cand = matches[j]
            # A closing fence: same character, at least as long, and no info string.
            if (
                cand.group(1)[0] == fence[0]
                and len(cand.group(1)) >= len(fence)
                and not cand.group(2)
                and cand.group(0).strip() == cand.group(1)
            ):
                closing = j
                break
        if closing is None:
            blocks.append((lang, text[body_start:], False))
            break
        blocks.append((lang, text[body_start : matches[closing].start()], True))
        i = closing + 1
    return blocks


def looks_like_policy(code: str) -> bool:
    """A whole policy file declares TUNABLES and defines partition() or route() at top level."""
    return bool(_TUNABLES_RE.search(code) and _POLICY_DEF_RE.search(code))


def _parses(code: str) -> bool:
    try:
        with PARSE_LOCK:
            ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def parse_edits(text: str) -> list[Edit]:
    """SEARCH/REPLACE blocks in order; raises EditError on a malformed block."""
    edits: list[Edit] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not _SEARCH_RE.match(lines[i]):
            i += 1
            continue
        n = len(edits) + 1
        j = i + 1
        while j < len(lines) and not _DIVIDER_RE.match(lines[j]):
            if _SEARCH_RE.match(lines[j]) or _REPLACE_RE.match(lines[j]):
                raise EditError(f"edit {n} is malformed: no ======= line after <<<<<<< SEARCH")
            j += 1
        if j >= len(lines):
            raise EditError(f"edit {n} is malformed: no ======= line after <<<<<<< SEARCH")
        k = j + 1
        while k < len(lines) and not _REPLACE_RE.match(lines[k]):
            if _SEARCH_RE.match(lines[k]):
                raise EditError(f"edit {n} is malformed: no >>>>>>> REPLACE line")
            k += 1
        if k >= len(lines):
            raise EditError(f"edit {n} is malformed: no >>>>>>> REPLACE line (reply cut short?)")
        edits.append(Edit("\n".join(lines[i + 1 : j]), "\n".join(lines[j + 1 : k])))
        i = k + 1
    return edits


def _indent_width(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _reindent(line: str, delta: int) -> str:
    if not line.strip():
        return ""
    expanded = line.expandtabs(4)
    if delta >= 0:
        return " " * delta + expanded
    cut = min(-delta, _indent_width(expanded))
    return expanded[cut:]


def _fuzzy_matches(file_lines: list[str], search_lines: list[str]) -> list[tuple[int, int, int]]:
    """Places where the non-blank search lines equal consecutive non-blank file lines once
    stripped, with one consistent indentation shift. Returns (first, last, shift) line spans;
    blank lines inside a span are covered by it, so blank-line differences do not matter."""
    wanted = [(line.strip(), _indent_width(line)) for line in search_lines if line.strip()]
    if not wanted:
        return []
    present = [
        (idx, line.strip(), _indent_width(line))
        for idx, line in enumerate(file_lines)
        if line.strip()
    ]
    found = []
    for start in range(len(present) - len(wanted) + 1):
        shift = present[start][2] - wanted[0][1]
        for offset, (text, width) in enumerate(wanted):
            _, have_text, have_width = present[start + offset]
            if have_text != text or have_width - width != shift:
                break
        else:
            found.append((present[start][0], present[start + len(wanted) - 1][0], shift))
    return found


def apply_edit(code: str, edit: Edit, number: int = 1) -> str:
    """Apply one edit: exact text first, then line-wise ignoring whitespace differences."""
    if not edit.search.strip():
        # An empty SEARCH means "add this": append it, as aider-style editors do.
        return code.rstrip("\n") + "\n\n" + edit.replace.strip("\n") + "\n"
    file_lines = code.splitlines()
    search_lines = edit.search.strip("\n").splitlines()
    replace_lines = edit.replace.strip("\n").splitlines()
    # Whole lines only: a substring match could land mid-line ("x = 1" inside "max = 1").
    size = len(search_lines)
    exact = [
        i for i in range(len(file_lines) - size + 1) if file_lines[i : i + size] == search_lines
    ]
    if len(exact) > 1:
        raise EditError(
            f"edit {number} did not apply: search text matches {len(exact)} places; "
            "include more surrounding lines so it matches exactly one"
        )
    if exact:
        new_lines = file_lines[: exact[0]] + replace_lines + file_lines[exact[0] + size :]
        return "\n".join(new_lines) + ("\n" if code.endswith("\n") else "")
    spans = _fuzzy_matches(file_lines, search_lines)
    if not spans:
        first = next((ln.strip() for ln in search_lines if ln.strip()), "")
        raise EditError(
            f"edit {number} did not apply: search text not found "
            f"(it starts with {first[:80]!r}); copy the lines exactly from the current file"
        )
    if len(spans) > 1:
        raise EditError(
            f"edit {number} did not apply: search text matches {len(spans)} places; "
            "include more surrounding lines so it matches exactly one"
        )
    first, last, shift = spans[0]
    replacement = [_reindent(line, shift) for line in replace_lines]
    new_lines = file_lines[:first] + replacement + file_lines[last + 1 :]
    return "\n".join(new_lines) + ("\n" if code.endswith("\n") else "")


def apply_edits(code: str, edits: list[Edit]) -> str:
    """Apply edits in order, each to the result of the previous ones."""
    for number, edit in enumerate(edits, start=1):
        code = apply_edit(code, edit, number)
    return code


def _whole_file(text: str) -> str | None:
    """The policy file a reply carries whole, if any.

    Prefers the last complete block that looks like a policy file (a model that shows a draft
    and then the fixed version means the last), then the largest such block, then a reply that
    is bare Python with no fence at all, then bare Python before the reply's first fence.
    """
    blocks = [(body, closed) for lang, body, closed in code_blocks(text) if lang in _PY_LANGS]
    policies = [body for body, closed in blocks if closed and looks_like_policy(body)]
    parsing = [body for body in policies if _parses(body)]
    if parsing:
        return parsing[-1]
    if policies:
        return max(policies, key=len)
    # A reply cut short inside its fence: usable only if what arrived still parses.
    cut = [body for body, closed in blocks if not closed and looks_like_policy(body)]
    if cut and _parses(cut[-1]):
        return cut[-1]
    if not blocks and looks_like_policy(text) and _parses(text.strip()):
        return text.strip()
    # The file with no opening fence, then a closing one and prose (Qwen2.5-Coder-1.5B went on
    # from the prompt's own fence): what comes before the first fence, when it alone is a file.
    first = _FENCE_RE.search(text)
    head = text[: first.start()].strip() if first else ""
    if head and looks_like_policy(head) and _parses(head):
        return head
    return None


def _normalize(code: str) -> str:
    return code.strip("\n") + "\n"


def parse_reply(reply: str, parent_code: str) -> tuple[str | None, str]:
    """Return ``(code, "")`` for a usable reply, or ``(None, reason)``.

    SEARCH/REPLACE edits win over fenced code, since a fence is often just their wrapper; edits
    apply to ``parent_code``. A result identical to the parent is refused: evaluating it again
    would teach nothing.
    """
    text = strip_reasoning(reply or "")
    if not text.strip():
        return None, "empty reply"
    if _SEARCH_RE.search(text):
        try:
            edits = parse_edits(text)
            code = apply_edits(parent_code, edits)
        except EditError as exc:
            # Edits that fail beside a whole file (say, markers quoted in prose): use the file.
            whole = _whole_file(text)
            if whole is None or _SEARCH_RE.search(whole):
                return None, str(exc)
            code = whole
    else:
        whole = _whole_file(text)
        if whole is None:
            if code_blocks(text):
                return None, (
                    "no complete policy file in reply: a whole file needs TUNABLES = {...} and "
                    "def partition(...) or def route(...) in one fenced python block"
                )
            return None, "no code in reply"
        code = whole
    code = _normalize(code)
    if code.strip() == parent_code.strip():
        return None, UNCHANGED
    return code, ""
