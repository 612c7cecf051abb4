"""The live router: a promoted policy's ``route()`` in front of real OpenAI-compatible servers.

Read in this order: ``observe`` (the ClusterView built from what the router sees live),
``policy_worker`` (the policy in one long-lived sandboxed worker, with a deadline per decision),
``metrics`` (Prometheus text), ``proxy`` (the aiohttp application that forwards requests).
"""
