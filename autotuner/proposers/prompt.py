"""The one place where a proposal request becomes text for a model (prompts/*.j2).

The campaign hands over data (``ProposalRequest``: the SLO, cluster, workloads, parent and its
scores); every sentence the model reads is written in the templates, so wording changes happen
there and nothing downstream ever has to read prose back.

A small local model follows a short prompt better than a long one, and pays for every token on
a CPU, so the first prompt is held under a token cap (``LLMConfig.prompt_token_cap``): when it is
over, the other policies shown for ideas go first, then the field meanings of the API reference;
the parent, the objective and the API's names and types always stay.
"""

from __future__ import annotations

import ast
import importlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jinja2

from autotuner.api_views import point_views
from autotuner.check import ALLOWED_MODULES, REFUSED_BUILTINS
from autotuner.diagnose import Diagnosis, diagnosis_table
from autotuner.policy import PARSE_LOCK
from autotuner.proposers.base import ParentInfo, ProposalRequest
from autotuner.resources import asset_dir

# SLO terms the objective lines phrase themselves; any other field of the SLO is listed by name.
PHRASED_SLO_TERMS = ("ttft_s", "tpot_s", "share")
BASELINE_CANDIDATE = "baseline"  # the tuned baseline's id in the archive
BRIEF_CHARS = 200  # a failure line shown to the model or printed in the progress
# Pieces a BPE tokenizer splits code and English into: a newline with its indent, a word with
# its leading space, a digit (llama.cpp's tokenizers split numbers digit by digit), one or two
# symbols. Words longer than _WORD_CHARS count as several tokens. Against SmolLM2's tokenizer
# (llama.cpp) this overestimates by 1-9 % on prompts, policy files and the repository's Python,
# and tokenizers of code models (Qwen2.5-Coder) are no less efficient: a cap holds for both.
_PIECES = re.compile(r"\n[ \t]*|[ \t]*[A-Za-z]+|\d|[ \t]*[^\sA-Za-z\d]{1,2}|[ \t]+")
_WORD_CHARS = 6


def estimate_tokens(text: str) -> int:
    """Prompt tokens without a tokenizer: a slight overestimate, enough to hold a cap."""
    count = 0
    for piece in _PIECES.findall(text):
        word = piece.lstrip(" \t")
        count += math.ceil(len(word) / _WORD_CHARS) if word[:1].isalpha() else 1
    return count


def messages_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """Estimated tokens of a chat request (a few per message for the chat template)."""
    return sum(estimate_tokens(m.get("content", "")) + 4 for m in messages)


def brief(text: str, limit: int = BRIEF_CHARS) -> str:
    """One line of at most ``limit`` characters: whitespace collapsed, the rest cut with '...'."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def strip_docstrings(code: str) -> str:
    """The code without its module, function and class docstrings; other lines verbatim, so
    a SEARCH block copied from it still matches. Unparseable code comes back unchanged."""
    try:
        with PARSE_LOCK:
            tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code
    drop: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) or not body:
            continue
        first = body[0]
        if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str) and first.end_lineno is not None):
            if len(body) == 1:
                continue  # a function that is only a docstring would not parse without it
            drop.update(range(first.lineno, first.end_lineno + 1))
            if isinstance(node, ast.Module):  # and the blank line after a module docstring
                after = first.end_lineno + 1
                lines = code.splitlines()
                if after <= len(lines) and not lines[after - 1].strip():
                    drop.add(after)
    if not drop:
        return code
    kept = [line for i, line in enumerate(code.splitlines(keepends=True), 1) if i not in drop]
    return "".join(kept)


# One concrete idea per request. "Improve the parent" alone let a 1.5B model send the parent back
# unchanged or rename its constants; a single named change, in the API's own field names, gives it
# something to write. Keyed by the diagnosis axis it addresses; requests without a diagnosis
# (the baseline, or runs cached before diagnostics) take them in turn by proposal number.
DIRECTIONS: dict[str, str] = {
    "imbalance": ("route: the r in cluster.replicas with least r.waiting_tokens - "
                  "r.prefix_hit_tokens"),
    "tbt_tail": "partition: a smaller budget as replica.decodes and replica.decode_context grow",
    "ttft_tail": ("partition: fewest req.remaining first, plus a bonus for replica.now - "
                  "req.arrival"),
    "preemptions": "partition: chunks under a share of replica.kv_free_tokens",
    "cache_hits": ("route: the r in cluster.replicas with most r.prefix_hit_tokens, unless its "
                   "r.waiting_tokens is far above the least"),
    "chunk_cap": "partition: cap one req's chunk at a share of the budget (a new tunable)",
}


def direction(diagnosis: Diagnosis | None, number: int) -> str:
    """The idea one request asks for: the parent's worst measured axis when it loses on one
    (summed material losses over workloads), else the ``number``-th of ``DIRECTIONS``."""
    worst: dict[str, float] = {}
    for w in diagnosis.workloads if diagnosis is not None else ():
        for f in w.losses():
            if f.axis in DIRECTIONS:
                worst[f.axis] = worst.get(f.axis, 0.0) + f.loss
    if worst:
        return DIRECTIONS[max(sorted(worst), key=lambda a: worst[a])]
    ideas = list(DIRECTIONS.values())
    return ideas[(number - 1) % len(ideas)]


_LINE_REASON = re.compile(r"\bline (\d+)\b")


def reason_line(reason: str) -> int:
    """The line a reason names ("line N: ..." from the check, "... at line N: ..." from a dry
    run); 0 when none."""
    match = _LINE_REASON.search(reason)
    return int(match.group(1)) if match else 0


def offending_line(reason: str, code: str | None) -> str:
    """The source line a reason names, stripped ("" when none)."""
    number = reason_line(reason)
    if code is None or not number:
        return ""
    lines = code.splitlines()
    return lines[number - 1].strip() if 1 <= number <= len(lines) else ""


# What an illegal decision's rule asks of the code. The dry run names the decision and the rule
# but no line (partition's return value is judged after it returns), and Qwen2.5-Coder-1.5B,
# told "chunk of 0 tokens for request 1 (1..19 allowed)", sent back a file that still made one.
RULE_ADVICE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"chunk of -?\d+ tokens for request"),
     "every chunk is 1 to req.remaining tokens: after computing take, `if take < 1: break` "
     "before chunks.append"),
    (re.compile(r"appears in two chunks"), "put each request in chunks at most once"),
    (re.compile(r"is not waiting on this replica"),
     "chunk only req.id of a req in replica.waiting"),
    (re.compile(r"chunk tokens \d+ exceed the budget"),
     "the chunks' tokens must fit in the budget you return minus replica.decodes: subtract each "
     "take from what is left"),
    (re.compile(r"exceed max_batch_tokens"),
     "the chunks' tokens plus replica.decodes must fit in replica.max_batch_tokens"),
    (re.compile(r"exceed the free KV cache"),
     "the chunks' tokens must fit in replica.kv_free_tokens: subtract each take from it"),
    (re.compile(r"replica -?\d+ does not exist"),
     "route returns an index 0..len(cluster.replicas)-1, e.g. r.replica of an r in "
     "cluster.replicas"),
)


def rule_advice(reason: str) -> str:
    """What the code must do to keep the rule a reason names ("" for none known)."""
    return next((advice for pattern, advice in RULE_ADVICE if pattern.search(reason)), "")


def marked_file(code: str, reasons: Sequence[str]) -> str:
    """The file with ``  # <- problem N`` after each line the N-th reason names."""
    lines = code.splitlines()
    marks: dict[int, list[str]] = {}
    for n, reason in enumerate(reasons, 1):
        number = reason_line(reason)
        if 1 <= number <= len(lines):
            marks.setdefault(number, []).append(str(n))
    for number, which in marks.items():
        lines[number - 1] += f"  # <- problem {', '.join(which)}"
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    """Numbers for a prompt: short, no 0.30000000000000004."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _signed(value: float) -> str:
    return f"{value:+.3g}" if value else "0"


def _number(value: float, spec: str) -> str:
    """``format(value, spec)``, for the templates (``{{ x | number(".0%") }}``)."""
    return format(value, spec)


def _one_line(text: str) -> str:
    """A paragraph written over several template lines, as the one line the model reads."""
    return text.strip("\n").replace("\n", " ")


def shown_scores(info: ParentInfo) -> dict[str, float]:
    """An archive member's scores as the model sees them, by name."""
    scores: dict[str, float] = {}
    if info.train_score is not None:
        scores["objective"] = info.train_score
    for label, gain in info.workload_gains.items():
        scores[f"gain[{label}]"] = gain
    return scores


def extra_slo_terms(slo: Mapping[str, Any]) -> dict[str, Any]:
    """The SLO's fields that the objective lines do not phrase (unset ones left out)."""
    return {k: v for k, v in slo.items() if k not in PHRASED_SLO_TERMS and v is not None}


def modules_line() -> str:
    """The import allow-list in a few words: a module allowed whole is named alone, a small
    allow-list is spelt out, a large partial one is 'most of' it (the check lists it if
    needed)."""
    parts = []
    for module, members in ALLOWED_MODULES.items():
        public = {n for n in dir(importlib.import_module(module)) if not n.startswith("_")}
        if public <= members:
            parts.append(module)
        elif len(members) <= 5:
            parts.append(f"{module} ({', '.join(sorted(members))})")
        else:
            parts.append(f"{module} (most of it)")
    return ", ".join(parts)


def template_env() -> jinja2.Environment:
    """The prompts/ templates; StrictUndefined so a missing variable fails loudly in tests."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(asset_dir("prompts"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["fmt"] = _fmt
    env.filters["signed"] = _signed
    env.filters["number"] = _number
    env.filters["one_line"] = _one_line
    env.filters["brief"] = brief
    env.globals["shown_scores"] = shown_scores
    env.globals["extra_slo_terms"] = extra_slo_terms
    env.globals["shown_code"] = strip_docstrings
    return env


def render_api_doc(env: jinja2.Environment | None = None, notes: bool = True) -> str:
    """The policy API as the model reads it (prompts/policy_api.md.j2), from sim/api.py."""
    env = env or template_env()
    return env.get_template("policy_api.md.j2").render(
        partition_views=point_views("partition"), route_views=point_views("route"), notes=notes)


@dataclass(frozen=True)
class FittedPrompt:
    """The opening messages, their estimated size, and what was left out to fit the cap."""

    messages: list[dict[str, str]]
    tokens: int  # estimated
    dropped: tuple[str, ...]  # "inspiration c0003", "field notes"


class PromptBuilder:
    """Renders the opening messages of a request and the fix-up messages of the repair loop."""

    def __init__(self, env: jinja2.Environment | None = None):
        self._env = env or template_env()
        self._api_doc: dict[bool, str] = {}

    def api_doc(self, notes: bool = True) -> str:
        if notes not in self._api_doc:
            self._api_doc[notes] = render_api_doc(self._env, notes)
        return self._api_doc[notes]

    def system(self, request: ProposalRequest, notes: bool = True) -> str:
        return self._env.get_template("system.j2").render(
            api_doc=(request.api_doc or self.api_doc(notes)).strip(),
            # The checker's own allow-lists, so the prompt can never drift from what it accepts.
            modules_line=modules_line(),
            refused_builtins=REFUSED_BUILTINS,
        )

    def shown_parent(self, request: ProposalRequest) -> str:
        """The parent's code as the model sees it, and as its edits apply: no docstrings."""
        return strip_docstrings(request.parent.code)

    def user(self, request: ProposalRequest, number: int = 1, idea: str | None = None) -> str:
        """``number``: the proposal's running number, which picks the idea when the parent
        has no diagnosis to pick it by; ``idea`` overrides the pick (``fit`` keeps the one the
        diagnosis chose after dropping the table)."""
        parent = request.parent
        table = None
        if parent.diagnosis is not None and parent.diagnosis.workloads:
            table = diagnosis_table(parent.diagnosis,
                                    parent.candidate_id == BASELINE_CANDIDATE)
        return self._env.get_template("propose.j2").render(
            objective=request.objective,
            cluster=request.cluster,
            workloads=request.workloads,
            parent=parent,
            parent_code=self.shown_parent(request),
            inspirations=request.inspirations,
            notes=request.notes,
            table=table,
            parent_is_baseline=parent.candidate_id == BASELINE_CANDIDATE,
            idea=idea or direction(parent.diagnosis, number),
        )

    def messages(self, request: ProposalRequest, notes: bool = True, number: int = 1,
                 idea: str | None = None) -> list[dict[str, str]]:
        """The opening system + user messages for a request, whole."""
        return [
            {"role": "system", "content": self.system(request, notes)},
            {"role": "user", "content": self.user(request, number, idea)},
        ]

    def fit(self, request: ProposalRequest, cap: int | None, number: int = 1) -> FittedPrompt:
        """The opening messages held under ``cap`` estimated tokens (None: no cap). Drops the
        last inspiration first, one at a time, then the API's field meanings, then the
        parent's diagnostics table; what is left is sent even when still over (the parent and
        the API's names cannot go)."""
        dropped: list[str] = []
        notes = True
        idea = direction(request.parent.diagnosis, number)
        msgs = self.messages(request, number=number, idea=idea)
        while cap is not None and messages_tokens(msgs) > cap:
            if request.inspirations:
                dropped.append(f"inspiration {request.inspirations[-1].candidate_id}")
                request = replace(request, inspirations=request.inspirations[:-1])
            elif notes and not request.api_doc:
                dropped.append("field notes")
                notes = False
            elif request.parent.diagnosis is not None:
                dropped.append("diagnostics")
                request = replace(request, parent=replace(request.parent, diagnosis=None))
            else:
                break
            msgs = self.messages(request, notes, number, idea)
        return FittedPrompt(msgs, messages_tokens(msgs), tuple(dropped))

    def repair(self, reasons: Sequence[str], code: str) -> str:
        """The message that asks for a refused file to be fixed, and nothing else: the file
        with the lines the reasons name marked, and the reasons beside those lines."""
        return self._env.get_template("repair.j2").render(
            marked=marked_file(code, reasons),
            reasons=[(r, offending_line(r, code), rule_advice(r)) for r in reasons])

    def fix(self, reasons: Sequence[str], code: str | None) -> str:
        """The message that sends an unusable reply or a refused file back with the reasons,
        each beside the line of the file it names: a small model told only "line 34" rewrote
        other lines, or sent the same file back."""
        return self._env.get_template("fix.j2").render(
            reasons=[(r, offending_line(r, code), rule_advice(r)) for r in reasons], code=code)
