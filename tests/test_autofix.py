"""The mechanical fixes the tool makes itself before another model call (proposers.autofix)."""

from __future__ import annotations

import pytest

from autotuner.check import check_reasons
from autotuner.proposers.autofix import mechanical_repair

HEAD = '''"""A policy a small model wrote."""
TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "default": 512},
    "max_share": {"type": "float", "low": 0.1, "high": 1.0, "default": 0.5},
}


def partition(replica, params):
'''
TAIL = '''    chunks = []
    for req in replica.waiting:
        take = min(req.remaining, room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
    return (room, tuple(chunks))
'''


def policy(body: str, route: str = "") -> str:
    return HEAD + body + TAIL + (f"\n\ndef route(request, cluster, params):\n{route}" if route
                                 else "")


@pytest.mark.parametrize("body, route, fixed_body, fixed_route, note", [
    ("    room = floor(min(params['chunk_size'], replica.max_batch_tokens) * 0.9)\n", "",
     "    room = floor(min(params['chunk_size'], replica.max_batch_tokens) * 0.9)\n", "",
     "added 'from math import floor'"),
    ("    room = min(chunk_size, replica.max_batch_tokens)\n", "",
     '    room = min(params["chunk_size"], replica.max_batch_tokens)\n', "",
     'line 9: the tunable chunk_size read as params["chunk_size"]'),
    ("    room = int(replica.max_batch_tokens * replica.max_share)\n", "",
     '    room = int(replica.max_batch_tokens * params["max_share"])\n', "",
     'line 9: replica.max_share (a tunable) read as params["max_share"]'),
    ("    room = int(replica.max_batch_tokens * params['max_shares'])\n", "",
     '    room = int(replica.max_batch_tokens * params["max_share"])\n', "",
     'line 9: params key "max_shares" read as "max_share", the tunable TUNABLES declares'),
    ("    room = replica.max_batch_tokens\n",
     "    best = min(cluster.replicas, key=lambda r: r.waiting_tokens)\n    return best.index\n",
     "    room = replica.max_batch_tokens\n",
     "    best = min(cluster.replicas, key=lambda r: r.waiting_tokens)\n    return best.replica\n",
     "line 22: .index written as .replica"),
    ("    room = min(replica.max_batch_token, params['chunk_size'])\n", "",
     "    room = min(replica.max_batch_tokens, params['chunk_size'])\n", "",
     "line 9: .max_batch_token written as .max_batch_tokens"),
])
def test_each_mechanical_fix_makes_a_refused_file_pass(body, route, fixed_body, fixed_route,
                                                       note):
    code = policy(body, route)
    assert check_reasons(code)
    fixed, notes = mechanical_repair(code)
    want = policy(fixed_body, fixed_route)
    if "import" in note:
        want = want.replace('model wrote."""\n', 'model wrote."""\nfrom math import floor\n')
    assert fixed == want and notes == (note,)
    assert check_reasons(fixed) == []


def test_several_fixes_at_once_and_a_file_that_needs_none_is_left_alone():
    code = policy("    room = ceil(min(chunk_size, replica.max_batch_tokens) * sqrt(0.5))\n",
                  "    return min(cluster.replicas, key=lambda r: r.outstanding).index\n")
    fixed, notes = mechanical_repair(code)
    assert check_reasons(fixed) == []
    assert "from math import ceil, sqrt\n" in fixed
    assert len(notes) == 3 and notes[-1] == "added 'from math import ceil, sqrt'"
    assert mechanical_repair(fixed) == (fixed, ())
    assert mechanical_repair("def partition(:\n") == ("def partition(:\n", ())


@pytest.mark.parametrize("body, route", [
    # a local of another function: which value was meant is the model's choice
    ("    room = replica.max_batch_tokens\n", "    return budget % len(cluster.replicas)\n"),
    # a field that lives on another view (ReplicaLoad.prefix_hit_tokens), not a spelling slip
    ("    room = replica.prefix_hit_tokens\n", ""),
    # a params key that is a field of the API: read the field, or declare it? a choice
    ("    room = params['max_batch_tokens']\n", ""),
    # a bare name that is math's constant: more likely a variable the model forgot
    ("    room = int(replica.max_batch_tokens / e)\n", ""),
    # a tunable outside partition and route has no params to read it from
    ("    room = helper()\n", ""),
])
def test_what_leaves_a_choice_is_left_to_the_model(body, route):
    code = policy(body, route)
    if "helper" in body:
        code += "\n\ndef helper():\n    return chunk_size\n"
    assert check_reasons(code)
    assert mechanical_repair(code) == (code, ())


@pytest.mark.parametrize("entry, fixed_entry", [
    ('{"type": "float", "low": 0.01, "high": 0.1, "step": 0.01, "default": 0.05}',
     '{"type": "float", "low": 0.01, "high": 0.1, "default": 0.05}'),
    ('{"type": "float", "low": 0.01, "high": 0.1, "default": 0.05, "step": 0.01}',
     '{"type": "float", "low": 0.01, "high": 0.1, "default": 0.05}'),
])
def test_a_tunables_key_the_format_lacks_is_dropped(entry, fixed_entry):
    """Optuna's "step" in a TUNABLES entry (Qwen2.5-Coder-1.5B wrote it, then sent it back)."""
    code = policy("    room = int(replica.max_batch_tokens * params['max_share'])\n")
    shown = '"max_share": {"type": "float", "low": 0.1, "high": 1.0, "default": 0.5}'
    slipped = code.replace(shown, f'"max_share": {entry}')
    assert "unknown keys ['step']" in check_reasons(slipped)[0]
    fixed, notes = mechanical_repair(slipped)
    assert fixed == code.replace(shown, f'"max_share": {fixed_entry}')
    assert notes == ("line 4: TUNABLES['max_share'] key 'step' dropped (not a TUNABLES key)",)
    assert check_reasons(fixed) == []


def test_requests_in_decode_are_spelt_as_each_view_spells_them():
    """r.decodes in route (Qwen2.5-Coder-1.5B, sent back twice): ReplicaLoad calls it running."""
    code = policy("    room = replica.max_batch_tokens - replica.decodes\n",
                  "    return min(cluster.replicas, key=lambda r: r.decodes).replica\n")
    (reason,) = check_reasons(code)
    assert ("(the number of requests in decode is the field .running here: write .running "
            "instead of .decodes)") in reason
    fixed, notes = mechanical_repair(code)
    assert notes == ("line 21: .decodes written as .running",)
    assert "key=lambda r: r.running).replica" in fixed and check_reasons(fixed) == []
