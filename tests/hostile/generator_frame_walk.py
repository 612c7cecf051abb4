# Walks frames from a generator up to the simulator to read its state.
# expect: rejected introspection-attribute
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    gen = (x for x in [0])
    frame = gen.gi_frame.f_back
    return len(frame.f_locals) % len(cluster.replicas)
