"""A candidate equal to a reference policy (up to what cannot change a decision) is named as it."""

from __future__ import annotations

import pytest

from autotuner.lineage import canonical_program, same_policy_as
from autotuner.resources import baseline_path

NAMES = ["fixed_chunk", "least_outstanding", "power_of_two", "prefix_aware", "sarathi_shrinking"]
REFS = {name: baseline_path(name).read_text() for name in NAMES}

# The case: least_outstanding sent back with a chunk_size tunable and the fixed-chunk
# partition it inherits written out, comments, another docstring, other local names.
LEAST_OUTSTANDING_COPY = '''"""A smarter router that balances outstanding work (my new idea)."""

TUNABLES = {
    "chunk": {"type": "int", "low": 64, "high": 4096, "log": True, "default": 1024},
}


def partition(replica, params):
    """Stall-free batching."""
    size = params["chunk"]  # the budget
    left = min(size, replica.max_batch_tokens) - replica.decodes
    kv_left = replica.kv_free_tokens
    picked = []
    for w in replica.waiting:
        n = min(w.remaining, left, kv_left)
        if n <= 0:
            break
        picked.append((w.id, n))
        left -= n
        kv_left -= n
    return (size, tuple(picked))


def _unused_helper(x):
    return x * 2


def route(request, cluster, params):
    # pick the least loaded replica
    target = min(cluster.replicas, key=lambda rep: (rep.outstanding, rep.waiting_tokens,
                                                   rep.replica))
    return target.replica
'''


@pytest.mark.parametrize("name", NAMES)
def test_each_reference_is_itself_and_no_other(name):
    assert canonical_program(REFS[name]) is not None
    assert same_policy_as(REFS[name], REFS) == name
    others = {k: v for k, v in REFS.items() if k != name}
    assert same_policy_as(REFS[name], others) is None


def test_a_copied_seed_with_cosmetic_changes_is_named_as_that_seed():
    assert same_policy_as(LEAST_OUTSTANDING_COPY, REFS) == "least_outstanding"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("rep.waiting_tokens,\n", "rep.running,\n"),  # another tie-break: another policy
        ("min(cluster.replicas", "max(cluster.replicas"),
        ("n = min(w.remaining, left, kv_left)", "n = min(w.remaining, left)"),
        ('"type": "int"', '"type": "float"'),  # the code computes with floats
        ("return (size, tuple(picked))", "return (size + 1, tuple(picked))"),
    ],
)
def test_a_change_that_can_alter_a_decision_is_a_new_policy(old, new):
    changed = LEAST_OUTSTANDING_COPY.replace(old, new)
    assert changed != LEAST_OUTSTANDING_COPY
    assert same_policy_as(changed, REFS) is None


def test_files_that_are_not_policies_match_nothing():
    assert same_policy_as("def broken(:\n", REFS) is None
    assert same_policy_as("x = 1\n", REFS) is None
    assert same_policy_as(REFS["fixed_chunk"], {"bad": "def broken(:\n"}) is None
