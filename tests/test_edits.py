"""Reply parsing: whole files, SEARCH/REPLACE edits applied tolerantly, and unusable replies."""

from __future__ import annotations

import pytest

from autotuner.policy import read_policy_source
from autotuner.proposers.edits import (
    Edit,
    EditError,
    apply_edit,
    code_blocks,
    parse_edits,
    parse_reply,
)
from autotuner.resources import baseline_path

PARENT = baseline_path("fixed_chunk").read_text()

NEW_FILE = """TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 1024},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    chunks = []
    for req in replica.waiting:
        take = min(req.remaining, room, replica.kv_free_tokens)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
    return (budget, tuple(chunks))
"""


def fenced(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}```\n"


def test_whole_file_in_fence():
    code, reason = parse_reply("Here is a better one:\n\n" + fenced(NEW_FILE) + "\nDone.", PARENT)
    assert reason == ""
    assert code == NEW_FILE
    read_policy_source(code)  # still a valid policy file


def test_last_complete_policy_block_wins_over_draft_and_snippets():
    draft = NEW_FILE.replace("1024", "2048")
    reply = (
        "Draft:\n"
        + fenced(draft)
        + "Helper idea:\n"
        + fenced("x = 1\n")
        + "Final:\n"
        + fenced(NEW_FILE)
        + "Usage:\n"
        + fenced("partition(view, params)\n")
    )
    code, reason = parse_reply(reply, PARENT)
    assert reason == "" and code == NEW_FILE


def test_block_that_does_not_parse_loses_to_one_that_does():
    broken = NEW_FILE + "def route(request, cluster, params:\n    return 0\n"
    code, reason = parse_reply(fenced(NEW_FILE) + fenced(broken), PARENT)
    assert reason == "" and code == NEW_FILE


def test_reasoning_section_is_ignored():
    reply = (
        "<think>\nmaybe\n" + fenced(NEW_FILE.replace("1024", "7")) + "</think>\n" + fenced(NEW_FILE)
    )
    code, _ = parse_reply(reply, PARENT)
    assert code == NEW_FILE


def test_unfenced_bare_python_file_is_accepted():
    code, reason = parse_reply(NEW_FILE, PARENT)
    assert reason == "" and code == NEW_FILE


def test_prose_without_code():
    code, reason = parse_reply("I would lower the chunk size when many decodes run.", PARENT)
    assert code is None and reason == "no code in reply"
    assert parse_reply("   ", PARENT) == (None, "empty reply")


def test_fragment_is_not_a_whole_file():
    code, reason = parse_reply(fenced("budget = 256\n"), PARENT)
    assert code is None and "no complete policy file" in reason


def test_reply_identical_to_parent_is_refused():
    code, reason = parse_reply(fenced(PARENT), PARENT)
    assert code is None and "unchanged" in reason


def test_exact_edits_possibly_fenced():
    reply = """Two changes:
```
<<<<<<< SEARCH
    budget = params["chunk_size"]
=======
    budget = params["chunk_size"] if replica.decodes < params["busy"] else params["small"]
>>>>>>> REPLACE
```
and the tunables:
<<<<<<< SEARCH
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 512},
=======
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 512},
    "small": {"type": "int", "low": 16, "high": 1024, "log": True, "default": 128},
    "busy": {"type": "int", "low": 1, "high": 256, "log": True, "default": 32},
>>>>>>> REPLACE
"""
    code, reason = parse_reply(reply, PARENT)
    assert reason == ""
    assert 'params["small"]' in code and '"busy": {' in code
    source = read_policy_source(code)
    assert {t.name for t in source.tunables} == {"chunk_size", "small", "busy"}
    # Everything else is untouched.
    assert (
        code.replace('if replica.decodes < params["busy"] else params["small"]', "").count("\n")
        == PARENT.count("\n") + 2
    )


def test_edit_with_wrong_indentation_and_trailing_spaces_applies_consistently():
    # The model dropped the function's indentation and left trailing spaces.
    reply = """<<<<<<< SEARCH
for req in replica.waiting:   
    take = min(req.remaining, room, kv_room)
    if take <= 0:
        break
=======
for req in sorted(replica.waiting, key=lambda r: r.remaining):
    take = min(req.remaining, room, kv_room)
    if take <= 0:
        continue
>>>>>>> REPLACE
"""  # noqa: W291 - the trailing spaces are the point
    code, reason = parse_reply(reply, PARENT)
    assert reason == ""
    assert "    for req in sorted(replica.waiting, key=lambda r: r.remaining):\n" in code
    assert "            continue\n" in code
    read_policy_source(code)


def test_edit_ignores_blank_line_differences():
    # No blank lines in SEARCH, two in the file between these lines: still one match, and the
    # blank lines inside the matched span are replaced with it.
    edit = Edit(
        "    return (budget, tuple(chunks))\ndef route(request, cluster, params):",
        "    return (budget, tuple(chunks))\n\n\ndef route(request, cluster, params):  # new",
    )
    out = apply_edit(PARENT, edit)
    assert "tuple(chunks))\n\n\ndef route(request, cluster, params):  # new\n" in out
    assert out.count("\n") == PARENT.count("\n")


def test_inconsistent_indentation_is_not_guessed():
    # The two lines sit at different depths in the file; flattening both is not one shift.
    edit = Edit("return (budget, tuple(chunks))\ndef route(request, cluster, params):", "X")
    with pytest.raises(EditError, match="not found"):
        apply_edit(PARENT, edit)


def test_edit_not_found_names_the_edit():
    reply = """<<<<<<< SEARCH
    budget = params["chunk_size"]
=======
    budget = 64
>>>>>>> REPLACE
<<<<<<< SEARCH
    budget = params["no_such_name"]
=======
    budget = 1
>>>>>>> REPLACE
"""
    code, reason = parse_reply(reply, PARENT)
    assert code is None
    assert reason.startswith("edit 2 did not apply: search text not found")


def test_ambiguous_edit_is_refused():
    reply = "<<<<<<< SEARCH\n        room -= take\n=======\n        room -= 2\n>>>>>>> REPLACE\n"
    parent = PARENT + "\n\ndef other(room, take):\n    while room:\n        room -= take\n"
    code, reason = parse_reply(reply, parent)
    assert code is None and "matches 2 places" in reason


def test_partial_line_is_not_matched_mid_line():
    # "x = 1" must not match inside "max = 1".
    with pytest.raises(EditError, match="not found"):
        apply_edit("max = 1\n", Edit("x = 1", "x = 2"))


def test_malformed_edit_block():
    with pytest.raises(EditError, match="REPLACE"):
        parse_edits("<<<<<<< SEARCH\na\n=======\nb\n")
    code, reason = parse_reply("<<<<<<< SEARCH\na\nb\n", PARENT)
    assert code is None and "malformed" in reason


def test_empty_search_appends():
    out = apply_edit(PARENT, Edit("", "def helper():\n    return 1"))
    assert out.endswith("\n\ndef helper():\n    return 1\n")


def test_unclosed_fence_is_used_only_if_it_parses():
    cut = "```python\n" + NEW_FILE
    assert parse_reply(cut, PARENT)[0] == NEW_FILE
    truncated = "```python\n" + NEW_FILE[: NEW_FILE.index("chunks.append")] + "chunks.append(("
    code, reason = parse_reply(truncated, PARENT)
    assert code is None and reason


def test_code_blocks_handles_tildes_and_languages():
    text = "~~~py\na = 1\n~~~\n```text\nnot code\n```\n"
    assert code_blocks(text) == [("py", "a = 1\n", True), ("text", "not code\n", True)]


def test_failed_edits_beside_a_whole_file_fall_back_to_the_file():
    reply = (
        "I considered an edit:\n<<<<<<< SEARCH\n    nothing like this\n=======\n    x\n"
        ">>>>>>> REPLACE\nbut here is the whole file instead:\n" + fenced(NEW_FILE)
    )
    assert parse_reply(reply, PARENT) == (NEW_FILE, "")


def test_parse_reply_never_raises_on_mangled_replies():
    import random

    rng = random.Random(7)
    pieces = [
        "```python",
        "```",
        "~~~",
        "<<<<<<< SEARCH",
        "=======",
        ">>>>>>> REPLACE",
        "<think>",
        "</think>",
        "TUNABLES = {}",
        "def partition(replica, params):",
        "    return (1, ())",
        '    budget = params["chunk_size"]',
        "",
        "prose",
        "\t\tx",
        "def route(request, cluster,",
    ]
    parent_lines = PARENT.splitlines()
    for _ in range(400):
        lines = [rng.choice(pieces + parent_lines) for _ in range(rng.randint(0, 30))]
        code, reason = parse_reply("\n".join(lines), PARENT)
        assert (code is None) == bool(reason)
