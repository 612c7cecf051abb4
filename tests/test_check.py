"""The static check: baselines pass, known sandbox escapes and format violations are refused."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from autotuner.check import (
    ALLOWED_IMPORTS,
    ALLOWED_MODULES,
    MAX_DEPTH,
    CheckResult,
    check_policy,
    check_reasons,
)
from autotuner.policy import MAX_POLICY_BYTES
from autotuner.resources import baseline_path

BASELINES = [
    "fixed_chunk",
    "least_outstanding",
    "power_of_two",
    "prefix_aware",
    "sarathi_shrinking",
]

# Every hostile snippet is appended to this valid policy, so that the snippet alone is at fault.
HEAD = "TUNABLES = {}\n\n\ndef route(request, cluster, params):\n    return 0\n"
HEAD_LINES = HEAD.count("\n")


def _check_snippet(snippet: str) -> CheckResult:
    return check_policy(HEAD + textwrap.dedent(snippet).lstrip("\n"))


def _assert_refused(result: CheckResult, construct: str, line: int) -> None:
    assert not result.ok
    found = {(i.construct, i.line) for i in result.issues}
    assert (construct, line) in found, result.reasons()


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_pass(name):
    path = baseline_path(name)
    result = check_policy(path.read_text(), name=str(path))
    assert result.ok, result.reasons()
    assert result.issues == ()
    assert result.source is not None and result.source.name == str(path)


# (snippet appended after HEAD, expected construct, line within the snippet)
HOSTILE = [
    # imports: only the allow-list, no submodules, no relative or star imports
    ("import os", "import", 1),
    ("import sys as s", "import", 1),
    ("from os import path", "import", 1),
    ("import os.path", "import", 1),
    ("import collections.abc", "import", 1),
    ("from collections.abc import Sequence", "import", 1),
    ("from . import sibling", "import", 1),
    ("from math import *", "import", 1),
    ("import operator", "import", 1),
    ("from __future__ import braces", "import", 1),
    ("def f():\n    import math\n    return math.pi", "import", 2),
    # members of allowed modules that lead elsewhere
    ("import statistics\ndef f():\n    return statistics.sys.modules", "module-member", 3),
    ("import typing\ndef f():\n    return typing.sys", "module-member", 3),
    ("import typing\ndef f():\n    return typing.get_type_hints(f)", "module-member", 3),
    ("import math as m\ndef f():\n    return m.sys", "module-member", 3),
    ("from random import SystemRandom", "module-member", 1),
    ("import random\ndef f():\n    return random.random()", "module-member", 3),
    ("import functools\ndef f():\n    return functools.update_wrapper", "module-member", 3),
    # module objects may not travel
    ("import math\nMODS = [math]", "module-name", 2),
    ("import math\nmath = 3", "module-name", 2),
    ("import math\ndef f(m=math):\n    return m", "module-name", 2),
    ("import math\ndef f():\n    g = lambda: math\n    return g", "module-name", 3),
    ("import math\ndef f(math):\n    return math.sys", "module-name", 2),
    # dunder attributes and names
    ("def f():\n    return ().__class__.__bases__[0].__subclasses__()", "dunder", 2),
    ("def f():\n    return [].__class__", "dunder", 2),
    ("def f():\n    return ''.join.__self__", "dunder", 2),
    ("import random\ndef f():\n    return random.__builtins__", "dunder", 3),
    ("import math\ndef f():\n    return math.__loader__", "dunder", 3),
    ("def f(x):\n    return x.__getattribute__('y')", "dunder", 2),
    ("def f():\n    return __builtins__", "dunder", 2),
    ("def f():\n    return __import__('os')", "dunder", 2),
    ("X = __name__", "dunder", 1),
    ("def f(__x):\n    return 1", "dunder", 1),
    ("def f(x):\n    return dict(__class__=x)", "dunder", 2),
    (
        "def f(x):\n    try:\n        pass\n    except Exception as e:\n"
        "        return e.__traceback__",
        "dunder",
        5,
    ),
    ("def f(x, y):\n    return f'{x:{y.__class__}}'", "dunder", 2),
    ("def f(x):\n    return x._\uff3fclass\uff3f\uff3f", "dunder", 2),
    # private and introspection attributes
    ("import random\ndef f():\n    return random._os", "private-attribute", 3),
    ("def f(r):\n    return r._asdict()", "private-attribute", 2),
    (
        "def f():\n    g = (i for i in ())\n    return g.gi_frame.f_back",
        "introspection-attribute",
        3,
    ),
    ("def f(fr):\n    return fr.f_globals", "introspection-attribute", 2),
    ("def f(tb):\n    return tb.tb_frame", "introspection-attribute", 2),
    ("def f(c):\n    return c.cr_frame", "introspection-attribute", 2),
    ("def f(c):\n    return c.co_consts", "introspection-attribute", 2),
    ("def f(fn):\n    return fn.func_globals", "introspection-attribute", 2),
    ("def f():\n    return int.mro()", "introspection-attribute", 2),
    # str.format attribute traversal
    ("def f(x):\n    return '{0.__class__}'.format(x)", "format-string", 2),
    ("def f(x):\n    return '{0.denominator}'.format(x)", "format-string", 2),
    ("def f(x):\n    return '{0[_x]}'.format(x)", "format-string", 2),
    ("def f(x):\n    return '{0:{1.real}}'.format(x, 3)", "format-string", 2),
    ("def f(fmt, x):\n    return fmt.format(x)", "format-string", 2),
    ("def f(x):\n    return str.format('{0.__class__}', x)", "format-string", 2),
    ("def f(x):\n    return ('{0.' + 'y}').format(x)", "format-string", 2),
    ("def f(d):\n    return '{x}'.format_map(d)", "format-string", 2),
    # forbidden built-ins, also when spelt with look-alike Unicode letters (NFKC-normalised)
    ("def f(x):\n    return getattr(x, 'y')", "builtin", 2),
    ("def f(x):\n    return \uff47etattr(x, 'y')", "builtin", 2),
    ("def f(x):\n    setattr(x, 'y', 1)", "builtin", 2),
    ("def f(x):\n    return hasattr(x, 'y')", "builtin", 2),
    ("def f():\n    return eval('1')", "builtin", 2),
    ("def f():\n    exec('x = 1')", "builtin", 2),
    ("def f():\n    return compile('1', 'f', 'eval')", "builtin", 2),
    ("def f():\n    return open('/etc/passwd').read()", "builtin", 2),
    ("def f(x):\n    return type(x)", "builtin", 2),
    ("def f():\n    return globals()['route']", "builtin", 2),
    ("def f():\n    return vars()", "builtin", 2),
    ("def f():\n    return dir()", "builtin", 2),
    ("def f():\n    return locals()", "builtin", 2),
    ("def f():\n    breakpoint()", "builtin", 2),
    ("def f():\n    return input()", "builtin", 2),
    ("def f():\n    print('hi')", "builtin", 2),
    ("def f(x):\n    return id(x)", "builtin", 2),
    ("def f():\n    return object()", "builtin", 2),
    ("def f():\n    exit(0)", "builtin", 2),
    ("def f(b):\n    return memoryview(b)", "builtin", 2),
    ("import functools\ndef f(xs):\n    return functools.reduce(getattr, xs)", "builtin", 3),
    ("@print\ndef f():\n    return 1", "builtin", 1),
    ("def f():\n    return sys.modules", "undefined-name", 2),
    # names Python would resolve to builtins: a local elsewhere does not count, globals must be
    # bound at module level
    ("def f():\n    foo = 1\ndef g():\n    return foo", "undefined-name", 4),
    ("def f():\n    global Y\n    Y = 1\ndef g():\n    return Y", "undefined-name", 5),
    # built-in names may not be rebound, so a built-in name always means the built-in
    ("len = 3", "shadow-builtin", 1),
    ("def f(type):\n    return type", "shadow-builtin", 1),
    ("def f(xs):\n    for id in xs:\n        pass", "shadow-builtin", 2),
    ("def f():\n    global getattr", "shadow-builtin", 2),
    ("def f(x):\n    getattr = x\n    return getattr", "shadow-builtin", 2),
    ("def f():\n    return (eval := 1)", "shadow-builtin", 2),
    ("def getattr(x, y):\n    return 0", "shadow-builtin", 1),
    ("from math import pow", "shadow-builtin", 1),
    (
        "def f():\n    try:\n        pass\n    except Exception as open:\n        pass",
        "shadow-builtin",
        4,
    ),
    # classes, async, with
    ("class C:\n    pass", "class", 1),
    ("class M(type):\n    pass", "class", 1),
    ("async def f():\n    pass", "async", 1),
    ("def f():\n    with g() as h:\n        pass", "with", 2),
    ("def f():\n    try:\n        pass\n    except* ValueError:\n        pass", "node", 2),
    ("import math\n@math\ndef f():\n    return 1", "module-name", 2),
    ("def f(*, key=getattr):\n    return key", "builtin", 1),
    ("def f():\n    raise SystemExit", "builtin", 2),
    # except and finally that would swallow the worker's interrupts
    ("def f():\n    try:\n        pass\n    except:\n        pass", "bare-except", 4),
    (
        "def f():\n    try:\n        pass\n    except BaseException:\n        pass",
        "except-base-exception",
        4,
    ),
    (
        "def f():\n    try:\n        pass\n    except (ValueError, BaseException):\n        pass",
        "except-base-exception",
        4,
    ),
    (
        "def f():\n    try:\n        pass\n    except KeyboardInterrupt:\n        pass",
        "except-base-exception",
        4,
    ),
    ("def f():\n    try:\n        pass\n    finally:\n        return 1", "finally-control", 5),
    (
        "def f():\n    while True:\n        try:\n            pass\n        finally:\n"
        "            continue",
        "finally-control",
        6,
    ),
    # attribute writes
    ("def f(x):\n    x.y = 1", "attribute-assignment", 2),
    ("def f(x):\n    del x.y", "attribute-assignment", 2),
    # match class patterns read attributes by keyword
    ("def f(x):\n    match x:\n        case int(__class__=c):\n            return c", "dunder", 3),
    (
        "def f(x):\n    match x:\n        case int(_y=c):\n            return c",
        "private-attribute",
        3,
    ),
    (
        "def f(g):\n    match g:\n        case int(gi_frame=fr):\n            return fr",
        "private-attribute",
        3,
    ),
    # constant-folding and allocation bombs
    ("X = 10 ** 10 ** 10", "constant-bomb", 1),
    ("X = 2 ** 100000", "constant-bomb", 1),
    ("def f(x):\n    return x ** 10000000", "constant-bomb", 2),
    ("X = 1 << 10 ** 6", "constant-bomb", 1),
    ("X = 'a' * 10 ** 9", "constant-bomb", 1),
    ("X = [0] * 10 ** 9", "constant-bomb", 1),
    ("X = pow(2, 10 ** 9)", "constant-bomb", 1),
    ("X = 1" + "0" * 100, "literal-size", 1),
    ("X = '" + "a" * 20_000 + "'", "literal-size", 1),
    # top level: only docstring, imports, TUNABLES, constants, defs
    ("if True:\n    X = 1", "top-level", 1),
    ("route(1, 2, 3)", "top-level", 1),
    ("if __name__ == '__main__':\n    pass", "top-level", 1),
    ("for i in range(3):\n    pass", "top-level", 1),
    ("X = {}\nX['a'] = 1", "top-level", 2),
    ("def f():\n    global TUNABLES", "reserved-name", 2),
    ("route = lambda request, cluster, params: 0", "reserved-name", 1),
    ("def route(request, cluster, params):\n    return 1", "reserved-name", 1),
    ("from math import floor as route", "reserved-name", 1),
    ("X = [(route := 1)]", "reserved-name", 1),
    # decision points must have the documented shape
    ("def partition(*args):\n    return (0, ())", "signature", 1),
    ("def partition(replica, params, extra=1):\n    return (0, ())", "signature", 1),
    ("def partition(replica, *, params):\n    return (0, ())", "signature", 1),
    (
        "import functools\n@functools.lru_cache\ndef partition(replica, params):\n"
        "    return (0, ())",
        "signature",
        2,
    ),
    # randomness must be seeded
    ("import random\n_rng = random.Random()", "unseeded-random", 2),
    ("from random import Random\n_rng = Random()", "unseeded-random", 2),
    # the compiler's own rules
    ("def f():\n    nonlocal x", "syntax", 2),
    ("def f(:\n    pass", "syntax", 1),
]


@pytest.mark.parametrize(
    ("snippet", "construct", "line"),
    HOSTILE,
    ids=[f"{i:03d}-{c}" for i, (_, c, _) in enumerate(HOSTILE)],
)
def test_hostile_snippet_refused(snippet, construct, line):
    result = _check_snippet(snippet)
    _assert_refused(result, construct, HEAD_LINES + line)
    issue = next(i for i in result.issues if i.construct == construct)
    assert issue.message.startswith(f"line {issue.line}: ")


def test_repeated_problem_reported_once_per_line():
    result = _check_snippet("X = " + " ** ".join(["2"] * 30))
    assert [i.construct for i in result.issues] == ["constant-bomb"]


def test_messages_say_what_to_do():
    reasons = _check_snippet("import os").reasons()
    assert reasons == [
        f"line {HEAD_LINES + 1}: import of 'os' is not allowed; policies may "
        f"import only: {', '.join(ALLOWED_IMPORTS)}"
    ]
    (why,) = _check_snippet("def f(x):\n    return getattr(x, 'y')").reasons()
    assert "getattr" in why and "allowed built-ins are:" in why and "obj.field" in why
    (why,) = _check_snippet("import random\n_rng = random.Random()").reasons()
    assert "random.Random(params['seed'])" in why


@pytest.mark.parametrize(
    ("code", "construct"),
    [
        ("def route(request, cluster, params):\n    return 0\n", "tunables"),
        ("TUNABLES = dict()\ndef route(request, cluster, params):\n    return 0\n", "tunables"),
        (
            "TUNABLES = {'x': {'type': 'int', 'low': 5, 'high': 1, 'default': 2}}\n"
            "def route(request, cluster, params):\n    return 0\n",
            "tunables",
        ),
        ("TUNABLES = {[1]: 2}\ndef route(request, cluster, params):\n    return 0\n", "tunables"),
        (
            "TUNABLES = {}\nTUNABLES = {}\ndef route(request, cluster, params):\n    return 0\n",
            "tunables",
        ),
        ("TUNABLES = {}\ndef helper(x):\n    return x\n", "decision-point"),
        ("def helper(x):\n    return x\n", "decision-point"),
    ],
)
def test_format_requirements(code, construct):
    result = check_policy(code)
    assert not result.ok
    assert construct in {i.construct for i in result.issues}, result.reasons()


def test_missing_tunables_and_functions_both_reported():
    constructs = {i.construct for i in check_policy("X = 1\n").issues}
    assert constructs == {"tunables", "decision-point"}


def test_tunable_problem_points_at_its_line():
    code = (
        '"""doc"""\n\nTUNABLES = {"x": {"type": "int", "low": 5, "high": 1, "default": 2}}\n'
        "def route(request, cluster, params):\n    return 0\n"
    )
    (issue,) = check_policy(code).issues
    assert (issue.construct, issue.line) == ("tunables", 3)
    assert "low < high" in issue.message and issue.message.startswith("line 3: ")


@pytest.mark.parametrize(
    ("code", "construct"),
    [
        ("x" * (MAX_POLICY_BYTES + 1), "size"),
        ("\u00e9" * (MAX_POLICY_BYTES // 2 + 1), "size"),
        ("\n" * 5000, "size"),
        ("x = 1\x00\n", "null-byte"),
        ("x = '\ud800'\n", "encoding"),
        (b"TUNABLES = {}\xff", "encoding"),
        (None, "encoding"),
        ("X = " + "[" * (MAX_DEPTH + 50) + "]" * (MAX_DEPTH + 50), "depth"),
        ("X = " + "-" * 50_000 + "1", "syntax"),
        ("X = " + "(" * 1000 + ")" * 1000, "syntax"),
        ("def f(:", "syntax"),
    ],
)
def test_malformed_input_refused_without_raising(code, construct):
    result = check_policy(code)
    assert not result.ok and result.source is None
    assert [i.construct for i in result.issues] == [construct], result.reasons()


def test_huge_input_is_cheap():
    result = check_policy("x = 1\n" * 10_000_000)
    assert [i.construct for i in result.issues] == ["size"]


def test_random_garbage_never_raises():
    rng = random.Random(1234)
    alphabet = "abcdefg_ ()[]{}:.,'\"\\\n\t=+-*/%@!#0123456789\x00\u00e9\ud800"
    base = (baseline_path("fixed_chunk")).read_text()
    for _ in range(300):
        if rng.random() < 0.5:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(200)))
        else:  # a valid file with a few characters mangled: mostly parses, mostly wrong
            chars = list(base)
            for _ in range(rng.randrange(1, 6)):
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            text = "".join(chars)
        result = check_policy(text)
        assert isinstance(result, CheckResult)
        assert result.ok == (not result.issues)
        assert all(isinstance(r, str) and r for r in result.reasons())


BENIGN = [
    # loops, comprehensions, min/max with key=lambda, sorted, math, seeded random
    '''
    """A benign partition policy exercising ordinary constructs."""

    from __future__ import annotations

    import math
    import random
    from collections import deque
    from typing import Optional

    TUNABLES = {
        "seed": {"type": "int", "low": 0, "high": 100, "default": 7},
        "alpha": {"type": "float", "low": 0.1, "high": 4.0, "default": 1.0, "log": True},
    }

    LIMIT = 2 ** 20
    WEIGHTS = (1.0, 0.5, 0.25)
    _rng = None
    _history = deque(maxlen=16)


    def _score(req, alpha: float) -> float:
        return req.remaining ** alpha / max(1.0, math.log1p(req.prompt_tokens))


    def partition(replica, params):
        global _rng
        if _rng is None:
            _rng = random.Random(params["seed"])
        _history.append(replica.last_iteration_s)
        avg: Optional[float] = sum(_history) / len(_history) if _history else None
        budget = min(replica.max_batch_tokens, LIMIT)
        room = budget - replica.decodes
        kv = replica.kv_free_tokens
        order = sorted(replica.waiting, key=lambda r: (_score(r, params["alpha"]), r.id))
        best = max(order, key=lambda r: r.remaining, default=None)
        chunks = []
        for req in order:
            take = min(req.remaining, room, kv)
            if take <= 0:
                break
            chunks.append((req.id, take))
            room -= take
            kv -= take
        ids = {c[0] for c in chunks}
        _ = [i for i in ids if i % 2 == 0 and best is not None and avg != 0.0]
        jitter = _rng.random() * 0.0
        return (int(budget + jitter), tuple(chunks))
    ''',
    # heapq, bisect, functools, itertools, statistics, f-strings, format, try/except, match
    """
    import bisect
    import functools
    import heapq
    import itertools
    import statistics

    TUNABLES = {}

    _seen = {}


    @functools.lru_cache(maxsize=128)
    def _bucket(n):
        return bisect.bisect_left((64, 256, 1024, 4096), n)


    def _label(i, load):
        return f"{i}:{load:.2f}" + "{}/{}".format(i, load) + "%d" % i


    def _gen(loads):
        for item in loads:
            yield item.outstanding


    def route(request, cluster, params):
        loads = cluster.replicas
        heap = [(r.outstanding, r.replica) for r in loads]
        heapq.heapify(heap)
        top = heapq.nsmallest(2, heap)
        pairs = list(itertools.islice(itertools.chain.from_iterable([top, top]), 4))
        mean = statistics.mean(list(_gen(loads))) if loads else 0.0
        try:
            ratio = request.prompt_tokens / mean
        except (ZeroDivisionError, ValueError):
            ratio = 0.0
        _seen[_label(request.id, ratio)] = _bucket(request.prompt_tokens)
        if len(_seen) > 1000:
            del _seen[next(iter(_seen))]
        total = functools.reduce(lambda a, b: a + b, (p[0] for p in pairs), 0)
        match top:
            case [(load, idx), *rest] if load <= total:
                return idx
            case _:
                return 0
    """,
    # closures with nonlocal, walrus, star-expressions, namedtuple, Counter, defaultdict
    """
    from collections import Counter, defaultdict, namedtuple

    TUNABLES = {"k": {"type": "int", "low": 1, "high": 8, "default": 2}}

    Pick = namedtuple("Pick", "replica score")
    _counts = Counter()
    _by_len = defaultdict(list)


    def route(request, cluster, params):
        calls = 0

        def score(r):
            nonlocal calls
            calls += 1
            return r.outstanding + r.waiting_tokens / 1e3

        first, *rest = sorted(cluster.replicas, key=score)
        if (n := len(rest)) and n > params["k"]:
            rest = rest[: params["k"]]
        pick = Pick(first.replica, score(first))
        _counts[pick.replica] += 1
        _by_len[request.prompt_tokens // 512].append(pick.replica)
        assert pick.replica >= 0, "negative replica"
        return pick.replica
    """,
]


@pytest.mark.parametrize("code", BENIGN, ids=["partition", "route-stdlib", "route-closures"])
def test_benign_policies_pass(code):
    result = check_policy(textwrap.dedent(code).lstrip("\n"), name="benign.py")
    assert result.ok, result.reasons()
    assert result.source is not None and result.source.name == "benign.py"


def test_source_is_returned_even_when_refused():
    result = _check_snippet("import os")
    assert not result.ok
    assert result.source is not None and result.source.defines == ("route",)


def test_allowed_members_exist_and_are_no_modules():
    """A typo would be a dead entry; a module among the members would reopen the import rule."""
    import importlib
    import types

    newer = {("itertools", "batched"), ("math", "cbrt"), ("math", "exp2")}  # 3.11/3.12 names
    for module_name, members in ALLOWED_MODULES.items():
        module = importlib.import_module(module_name)
        for member in members:
            assert not member.startswith("_")
            if (module_name, member) in newer and not hasattr(module, member):
                continue
            assert hasattr(module, member), f"{module_name}.{member}"
            assert not isinstance(getattr(module, member), types.ModuleType)


def test_no_warnings_and_same_answers_from_threads(recwarn):
    from concurrent.futures import ThreadPoolExecutor

    codes = [HEAD + "X = '\\d'\n", HEAD + "import os\n", HEAD] * 20
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(check_reasons, codes))
    assert results == [check_reasons(c) for c in codes]
    assert results[0] == [] and results[1] and results[2] == []
    assert not [w for w in recwarn if issubclass(w.category, SyntaxWarning | DeprecationWarning)]


# ------------------------------------------------------------------- messages a proposer can act on
def test_an_import_inside_a_function_says_what_is_wrong_with_the_module_too():
    """Moving 'import os' to the top used to be refused again: the first message must say both."""
    (why,) = _check_snippet("def f():\n    import os\n    return 1").reasons()
    assert "'os' is not allowed" in why and ", ".join(ALLOWED_IMPORTS) in why
    assert "top of the file" in why
    (why,) = _check_snippet("def f():\n    from subprocess import run\n    return 1").reasons()
    assert "'subprocess'" in why and "not allowed" in why and "top of the file" in why
    (why,) = _check_snippet("def f():\n    import math\n    return math.pi").reasons()
    assert "move 'import math' to the top" in why
    assert _check_snippet("import math\n\n\ndef f():\n    return math.pi").ok


def test_a_class_gets_one_reason_that_says_why_and_what_instead():
    for snippet in ("class Helper:\n    pass", "def f():\n    class Helper:\n        pass"):
        (why,) = _check_snippet(snippet).reasons()
        assert "class definitions are not allowed" in why
        assert "dunder methods" in why and "namedtuple" in why
        assert "move this code into a function" not in why


def test_every_refusal_of_a_with_block_has_a_line():
    result = _check_snippet("def f(params):\n    with params as p, params:\n        return p")
    assert [(i.construct, i.line) for i in result.issues] == [("with", HEAD_LINES + 2)]
    assert all(i.message.startswith(f"line {i.line}: ") for i in result.issues)


def test_a_null_byte_is_reported_with_its_line_wherever_the_file_is_read():
    from autotuner.policy import PolicyFileError, read_policy_source

    code = HEAD + "X = 1\x00\n"
    (why,) = check_policy(code).reasons()
    assert why == f"line {HEAD_LINES + 1}: the file contains a null byte; remove it"
    with pytest.raises(PolicyFileError) as err:
        read_policy_source(code, "p.py")
    assert str(err.value) == f"p.py line {HEAD_LINES + 1}: the file contains a null byte; remove it"


def test_a_utf8_byte_order_mark_is_accepted_as_python_accepts_it():
    from autotuner.policy import read_policy_source

    code = baseline_path("fixed_chunk").read_text()
    for text in ("\ufeff" + code, b"\xef\xbb\xbf" + code.encode()):
        result = check_policy(text)
        assert result.ok, result.reasons()
        assert result.source is not None and result.source.code == code
    assert read_policy_source("\ufeff" + code).code == code
    assert not check_policy(code.replace("TUNABLES", "\ufeffTUNABLES", 1)).ok  # only at the start


def test_private_names_pass_and_underscore_attributes_and_dunder_names_do_not():
    """What the README says: attributes starting with '_' and names starting with '__' are
    refused; a private helper or variable name (``_rng``, ``def _helper``) is harmless."""
    assert _check_snippet("_LIMIT = 3\n\n\ndef _helper(x):\n    _y = x\n    return _y").ok
    _assert_refused(_check_snippet("def f(x):\n    return x._y"), "private-attribute",
                    HEAD_LINES + 2)
    _assert_refused(_check_snippet("def __f(x):\n    return x"), "dunder", HEAD_LINES + 1)
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "any attribute starting with `_` and any name starting with `__`" in readme
    assert "any name or attribute starting with `_`" not in readme


@pytest.mark.parametrize("code", ["", "\n\n", "# only a comment\n", '"""Only a docstring."""\n'])
def test_a_file_with_no_code_gets_one_reason(code):
    (issue,) = check_policy(code).issues
    assert issue.construct == "empty" and "TUNABLES" in issue.message
    assert "partition(replica, params)" in issue.message


# --- the policy API: fields checked against sim/api.py ----------------------------------------

def _policy(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def _issue(code: str, construct: str):
    issues = [i for i in check_policy(code).issues if i.construct == construct]
    assert len(issues) == 1, check_policy(code).reasons()
    return issues[0]


def test_every_field_of_every_view_is_accepted_and_a_wrong_one_refused():
    """Generated from api.py, so a field added there is known to the check at once."""
    from autotuner.api_views import views
    from autotuner.sim import api

    reads = {
        "ReplicaView": "replica",
        "WaitingView": "replica.waiting[0]",
        "RequestView": "request",
        "ClusterView": "cluster",
        "ReplicaLoad": "cluster.replicas[0]",
    }
    assert set(reads) == set(views())
    for name, expr in reads.items():
        point = "partition" if expr.startswith("replica") else "route"
        args = "replica, params" if point == "partition" else "request, cluster, params"
        fields = getattr(api, name)._fields
        lines = "".join(f"    x = {expr}.{f}\n" for f in fields)
        good = f"TUNABLES = {{}}\n\n\ndef {point}({args}):\n{lines}    return 0\n"
        assert check_policy(good).ok, check_policy(good).reasons()
        bad = good.replace("    return 0\n", f"    return {expr}.no_such_field\n")
        issue = _issue(bad, "api-field")
        assert issue.line == 5 + len(fields)
        assert f"{name} fields: {', '.join(fields)}" in issue.message


ISSUE_EXAMPLES = [
    # (what the model wrote, the line it is on, words the reason must contain)
    (
        """
        TUNABLES = {}

        def partition(replica, params):
            if replica.running > 4:
                return (0, ())
            return (512, ())
        """,
        4,
        ["'replica.running'", "ReplicaView", "write .decodes instead of .running"],
    ),
    (
        """
        TUNABLES = {}

        def route(request, cluster, params):
            if request.prefilled > 0:
                return 0
            return 1
        """,
        4,
        ["RequestView", "prompt_tokens", "'prefilled' is a field of WaitingView"],
    ),
    (
        """
        TUNABLES = {}

        def route(request, cluster, params):
            best = min(cluster.replicas, key=lambda r: (r.outstanding, r.replica))
            return best.index
        """,
        5,
        ["'best.index'", "best is a ReplicaLoad (an entry of cluster.replicas)",
         "fields: replica, running"],
    ),
    (
        """
        TUNABLES = {}

        def partition(replica, params):
            chunks = []
            for req in replica.waiting:
                chunks.append((req.id, req.remaining_tokens))
            return (512, tuple(chunks))
        """,
        6,
        ["'req.remaining_tokens'", "WaitingView", "did you mean .remaining?"],
    ),
    (
        """
        TUNABLES = {}

        def route(request, cluster, params):
            i = request.id % len(cluster.replicas)
            return cluster.replicas[i].index
        """,
        5,
        ["'cluster.replicas[i].index'", "ReplicaLoad"],
    ),
    (
        """
        TUNABLES = {}

        def load(r):
            return r.running + r.queued

        def route(request, cluster, params):
            return min(range(len(cluster.replicas)), key=lambda j: load(cluster.replicas[j]))
        """,
        4,
        ["'r.queued'", "r is a ReplicaLoad"],
    ),
    (
        """
        TUNABLES = {}

        def partition(replica, params):
            return (replica.waiting.remaining, ())
        """,
        4,
        ["replica.waiting is a tuple of WaitingView", "'remaining' is a field of each entry",
         "for x in replica.waiting"],
    ),
]


@pytest.mark.parametrize(("code", "line", "words"), ISSUE_EXAMPLES)
def test_fields_a_view_does_not_have_are_refused_with_the_valid_ones(code, line, words):
    issue = _issue(_policy(code), "api-field")
    assert issue.line == line, issue.message
    for word in words:
        assert word in issue.message, issue.message


@pytest.mark.parametrize(
    "code",
    [
        # the same name for different kinds of values: unknown, so never checked
        """
        TUNABLES = {}

        def route(request, cluster, params):
            x = cluster.replicas[0]
            x = request
            return x.id if x.id else 0
        """,
        # optional views, loops, enumerate, next(), sorted(), a helper called consistently
        """
        TUNABLES = {"w": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}}

        def score(load, weight):
            return load.outstanding + weight * load.waiting_tokens

        def route(request, cluster, params):
            best = None
            for i, r in enumerate(cluster.replicas):
                if best is None or score(r, params["w"]) < score(best, params["w"]):
                    best = r
            hit = next((r for r in cluster.replicas if r.prefix_hit_tokens > 0), None)
            order = sorted(cluster.replicas, key=lambda r: r.kv_free_tokens)
            if hit is not None and hit.kv_free_tokens > request.prompt_tokens:
                return hit.replica
            return best.replica if best is not None else order[-1].replica

        def partition(replica, params):
            first = replica.waiting[0] if replica.waiting else None
            ids = [w.id for w in replica.waiting[:4]]
            n = replica.waiting.count(first)
            return (params.get("w", 1) and 512, tuple((i, 1) for i in ids[:n]))
        """,
    ],
)
def test_legal_uses_of_the_views_pass(code):
    result = check_policy(_policy(code))
    assert result.ok, result.reasons()


def test_a_reason_about_a_name_points_at_the_use_that_is_wrong():
    """The issue's case: 'room' is a legal local of partition (line 4 and 7) and is used,
    unbound, in route (line 17); the reason must name line 17 and say why."""
    code = _policy(
        """
        TUNABLES = {}

        def partition(replica, params):
            room = replica.max_batch_tokens - replica.decodes
            chunks = []
            for req in replica.waiting:
                take = min(req.remaining, room)
                if take <= 0:
                    break
                chunks.append((req.id, take))
                room -= take
            return (512, tuple(chunks))


        def route(request, cluster, params):
            for r in cluster.replicas:
                if r.kv_free_tokens > room:
                    return r.replica
            return 0
        """
    )
    issue = _issue(code, "undefined-name")
    assert issue.line == 17, issue.message
    assert "used in route" in issue.message and "local variable of partition" in issue.message


def test_a_name_not_imported_or_a_bare_tunable_gets_the_fix():
    code = _policy(
        """
        TUNABLES = {"chunk": {"type": "int", "low": 32, "high": 4096, "default": 512}}

        def partition(replica, params):
            budget = floor(chunk * 1.5)
            return (ceil(budget), ())
        """
    )
    reasons = check_policy(code).reasons()
    assert len(reasons) == 3, reasons
    floor_, chunk, ceil_ = (next(r for r in reasons if f"'{name}'" in r)
                            for name in ("floor", "chunk", "ceil"))
    assert floor_.startswith("line 4:") and "import it from math at the top" in floor_
    assert "from math import floor" in floor_
    assert ceil_.startswith("line 5:") and "from math import ceil" in ceil_
    assert chunk.startswith("line 4:")
    assert "'chunk' is a tunable" in chunk and 'params["chunk"]' in chunk


def test_a_tunables_bound_that_reads_a_runtime_value_names_the_entry_and_key():
    code = _policy(
        """
        TUNABLES = {
            "chunk": {"type": "int", "low": 32, "high": replica.max_batch_tokens,
                      "default": 512},
        }

        def partition(replica, params):
            return (params["chunk"], ())
        """
    )
    (reason,) = check_policy(code).reasons()  # one reason: no second one about 'replica'
    assert reason.startswith("line 2: TUNABLES entry 'chunk': key \"high\" must be a number")
    assert "replica.max_batch_tokens" in reason


def test_params_is_a_mapping_and_views_are_not_dicts():
    code = _policy(
        """
        TUNABLES = {"chunk": {"type": "int", "low": 32, "high": 4096, "default": 512}}

        def partition(replica, params):
            return (params.chunk + replica["decodes"], ())
        """
    )
    by = {i.construct: i for i in check_policy(code).issues}
    assert 'params["chunk"]' in by["params-attribute"].message
    assert "replica.replica" in by["api-field"].message and "named tuple" in by["api-field"].message


def test_a_long_list_of_names_is_spelt_out_once():
    code = HEAD + "def f(x):\n    print(x)\n    print(getattr(x, 'a'))\n    return type(x)\n"
    reasons = check_policy(code).reasons()
    assert len(reasons) == 4
    assert "allowed built-ins are: ArithmeticError, " in reasons[0]
    assert all(r.endswith("allowed built-ins are: (listed above)") for r in reasons[1:])
    assert sum(len(r) for r in reasons) < 1200


def test_a_tunables_reason_points_at_the_entry_it_names():
    code = _policy(
        """
        TUNABLES = {
            "a": {"type": "int", "low": 1, "high": 9, "default": 2},
            "b": {"type": "int", "low": 5, "high": 1,
                  "default": 2},
            "c": {"type": "int", "low": 1, "high": 9, "default": 2.5},
        }

        def partition(replica, params):
            return (params["a"], ())
        """
    )
    (issue,) = check_policy(code).issues
    assert issue.line == 3 and "TUNABLES['b'] needs low < high" in issue.message
    fixed = code.replace('"low": 5, "high": 1,', '"low": 1, "high": 9,')
    (issue,) = check_policy(fixed).issues
    assert issue.line == 5 and "TUNABLES['c']['default'] must be whole" in issue.message


def test_a_name_no_line_assigns_is_told_where_to_assign_it_not_the_import_list():
    code = ('TUNABLES = {}\n\n\ndef partition(replica, params):\n    chunks = []\n'
            '    return (budget, tuple(chunks))\n')
    (reason,) = check_policy(code).reasons()
    assert reason == ("line 6: the name 'budget' is used in partition but is never assigned: no "
                      "line of partition or of the module sets 'budget'; assign budget = ... in "
                      "partition before this line, or use a value partition already has")
