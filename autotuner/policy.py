"""Policy files: reading their declared tunables without running them, and loading them.

One Python file is one candidate, baselines and proposals alike. It declares ``TUNABLES`` as a
dict literal (read here with ``ast.literal_eval``, so the tuner and the checker never execute
untrusted code to learn the search space) and defines ``partition(replica, params)`` and/or
``route(request, cluster, params)``. A decision point a file leaves out is taken from the
fixed-chunk baseline file, and so are that file's tunables (unless the policy declares a tunable of
the same name), so a route-only policy is tuned on the same terms as the baseline: the fallback is
data (another policy file), not a special case in the simulator.

What a file may import and call (``ALLOWED_MODULES``, ``ALLOWED_BUILTINS``) is part of the format,
so it is written here: ``autotuner.check`` refuses a file that reaches for anything else, and
``load_policy`` admits nothing else. ``load_policy`` executes the file, so only call it on trusted
files or inside the sandbox worker.
"""

from __future__ import annotations

import ast
import builtins
import math
import threading
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotuner.resources import baseline_path

DECISION_POINTS = ("partition", "route")
FALLBACK_BASELINE = "fixed_chunk"
MAX_POLICY_BYTES = 64_000
TUNABLE_TYPES = ("int", "float")
TUNABLE_KEYS = frozenset({"type", "low", "high", "default", "log"})  # of one TUNABLES entry

# What a policy may import: pure-computation modules, and of each only the members a heuristic
# needs (the static check refuses everything else, and the loader admits nothing else). Members
# are listed rather than taken whole because these modules import others (statistics.sys,
# typing.sys).
# random: only the Random class, so randomness is always a seeded instance (scores must be
# reproducible: the gate pairs runs by seed). statistics: no NormalDist (its samples() is
# unseeded). typing: annotation helpers only (get_type_hints evaluates strings).
ALLOWED_MODULES: dict[str, frozenset[str]] = {
    "math": frozenset(
        """acos acosh asin asinh atan atan2 atanh cbrt ceil comb copysign cos cosh degrees dist
        e erf erfc exp exp2 expm1 fabs factorial floor fmod frexp fsum gamma gcd hypot inf isclose
        isfinite isinf isnan isqrt lcm ldexp lgamma log log10 log1p log2 modf nan nextafter perm
        pi pow prod radians remainder sin sinh sqrt tan tanh tau trunc ulp""".split()
    ),
    "random": frozenset({"Random"}),
    "statistics": frozenset(
        """fmean geometric_mean harmonic_mean mean median median_grouped median_high median_low
        mode multimode pstdev pvariance quantiles stdev variance StatisticsError""".split()
    ),
    "collections": frozenset({"Counter", "OrderedDict", "defaultdict", "deque", "namedtuple"}),
    "itertools": frozenset(
        """accumulate batched chain combinations combinations_with_replacement compress count
        cycle dropwhile filterfalse groupby islice pairwise permutations product repeat starmap
        takewhile tee zip_longest""".split()
    ),
    "functools": frozenset({"cache", "cmp_to_key", "lru_cache", "partial", "reduce"}),
    "heapq": frozenset(
        """heapify heappop heappush heappushpop heapreplace merge nlargest nsmallest""".split()
    ),
    "bisect": frozenset(
        """bisect bisect_left bisect_right insort insort_left insort_right""".split()
    ),
    "typing": frozenset(
        """Any Callable Dict FrozenSet Iterable Iterator List Mapping Optional Sequence Set Tuple
        Union""".split()
    ),
}
ALLOWED_IMPORTS: tuple[str, ...] = tuple(ALLOWED_MODULES)

# Built-ins a heuristic uses. Everything else in ``builtins`` (getattr, type, eval, open, print,
# id, object, super, vars, globals, ...) is refused by name. print is out because the worker's
# standard streams are not the policy's to write; id is out because it is not reproducible.
ALLOWED_BUILTINS = frozenset(
    """abs all any bin bool callable chr complex dict divmod enumerate filter float format
    frozenset hash hex int isinstance iter len list map max min next oct ord pow range repr
    reversed round set slice sorted str sum tuple zip
    ArithmeticError AssertionError AttributeError Exception IndexError KeyError LookupError
    NotImplementedError OverflowError RuntimeError StopIteration TypeError ValueError
    ZeroDivisionError""".split()
)


# CPython 3.11 keeps the AST converter's recursion counter in interpreter-wide state: two threads
# parsing at once (a garbage collection in one lets the other run) can fail with "SystemError:
# AST constructor recursion depth mismatch". Proposers parse in threads, so every parse of policy
# code in this package takes this lock (reentrant: the check parses inside its own parse step).
PARSE_LOCK = threading.RLock()


class PolicyFileError(ValueError):
    """A policy file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Tunable:
    """One declared numeric parameter: the tuner searches [low, high], log-scaled if ``log``."""

    name: str
    type: str  # "int" or "float"
    low: float
    high: float
    default: float
    log: bool = False

    def clip(self, value: float) -> float | int:
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.type == "int" else float(value)


@dataclass(frozen=True)
class PolicySource:
    """A policy file as text plus what can be known about it without running it."""

    name: str
    code: str
    tunables: tuple[Tunable, ...]
    defines: tuple[str, ...]  # which decision points the file itself implements

    def defaults(self) -> dict[str, float | int]:
        return {t.name: t.clip(t.default) for t in self.tunables}

    def resolve_params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, float | int]:
        """Defaults overlaid with ``overrides``; unknown names and out-of-range values refused."""
        params = self.defaults()
        by_name = {t.name: t for t in self.tunables}
        for key, value in (overrides or {}).items():
            if key not in by_name:
                known = ", ".join(by_name) or "none"
                raise PolicyFileError(f"{self.name}: no tunable named {key!r} (declared: {known})")
            tunable = by_name[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PolicyFileError(f"{self.name}: tunable {key!r} must be a number")
            if not math.isfinite(value) or not tunable.low <= value <= tunable.high:
                raise PolicyFileError(
                    f"{self.name}: tunable {key!r}={value!r} is outside "
                    f"[{tunable.low}, {tunable.high}]"
                )
            params[key] = tunable.clip(value)
        return params


def _parse_tunable(name: Any, spec: Any, where: str) -> Tunable:
    if not isinstance(name, str) or not name.isidentifier():
        raise PolicyFileError(f"{where}: tunable names must be identifiers, got {name!r}")
    if not isinstance(spec, dict):
        raise PolicyFileError(f"{where}: TUNABLES[{name!r}] must be a dict")
    unknown = set(spec) - TUNABLE_KEYS
    if unknown:
        raise PolicyFileError(f"{where}: TUNABLES[{name!r}] has unknown keys {sorted(unknown)}")
    kind = spec.get("type")
    if kind not in TUNABLE_TYPES:
        raise PolicyFileError(f"{where}: TUNABLES[{name!r}]['type'] must be 'int' or 'float'")
    values = {}
    for key in ("low", "high", "default"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyFileError(f"{where}: TUNABLES[{name!r}][{key!r}] must be a number")
        if not math.isfinite(value) or abs(value) > 1e12:
            raise PolicyFileError(f"{where}: TUNABLES[{name!r}][{key!r}] must be finite and sane")
        if kind == "int" and value != int(value):
            raise PolicyFileError(f"{where}: TUNABLES[{name!r}][{key!r}] must be whole for int")
        values[key] = value
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise PolicyFileError(f"{where}: TUNABLES[{name!r}]['log'] must be True or False")
    if not values["low"] < values["high"]:
        raise PolicyFileError(f"{where}: TUNABLES[{name!r}] needs low < high")
    if not values["low"] <= values["default"] <= values["high"]:
        raise PolicyFileError(f"{where}: TUNABLES[{name!r}] default must lie in [low, high]")
    if log and values["low"] <= 0:
        raise PolicyFileError(f"{where}: TUNABLES[{name!r}] is log-scaled, so low must be > 0")
    return Tunable(name, kind, values["low"], values["high"], values["default"], log)


def read_policy_source(code: str, name: str = "<policy>") -> PolicySource:
    """Parse a policy file's text: syntax, TUNABLES literal, decision functions. Never executes."""
    code = code.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as Python itself accepts
    try:
        size = len(code.encode())
    except UnicodeEncodeError:
        raise PolicyFileError(f"{name}: file is not valid UTF-8 text") from None
    if size > MAX_POLICY_BYTES:
        raise PolicyFileError(f"{name}: file is larger than {MAX_POLICY_BYTES} bytes")
    if "\x00" in code:
        line = code.count("\n", 0, code.index("\x00")) + 1
        raise PolicyFileError(f"{name} line {line}: the file contains a null byte; remove it")
    try:
        with PARSE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(code, filename=name)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        msg = getattr(exc, "msg", str(exc))
        where = f"{name} line {line}" if line else name
        raise PolicyFileError(f"{where}: syntax error: {msg}") from None
    tunables_node = None
    defines = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TUNABLES" for t in node.targets
        ):
            tunables_node = node
        elif isinstance(node, ast.FunctionDef) and node.name in DECISION_POINTS:
            defines.append(node.name)
    if tunables_node is None:
        raise PolicyFileError(f"{name}: must declare TUNABLES = {{...}} (an empty dict is fine)")
    where = f"{name} line {tunables_node.lineno}"
    value = tunables_node.value
    if isinstance(value, ast.Dict):
        keys = [k.value for k in value.keys if isinstance(k, ast.Constant)]
        dup = sorted({str(k) for k in keys if keys.count(k) > 1})
        if dup:
            raise PolicyFileError(f"{where}: TUNABLES declares {', '.join(dup)} twice")
    try:
        with PARSE_LOCK:
            raw = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise PolicyFileError(f"{where}: TUNABLES must be a literal dict of dicts") from None
    if not isinstance(raw, dict):
        raise PolicyFileError(f"{where}: TUNABLES must be a dict")
    tunables = tuple(_parse_tunable(k, v, where) for k, v in raw.items())
    if not defines:
        raise PolicyFileError(f"{name}: defines neither partition() nor route()")
    if set(defines) != set(DECISION_POINTS):
        own = {t.name for t in tunables}
        inherited = _fallback_source().tunables
        tunables += tuple(t for t in inherited if t.name not in own)
    return PolicySource(name, code, tunables, tuple(sorted(defines)))


_FALLBACK: PolicySource | None = None


def _fallback_source() -> PolicySource:
    global _FALLBACK
    if _FALLBACK is None:
        path = baseline_path(FALLBACK_BASELINE)
        _FALLBACK = read_policy_source(path.read_text(encoding="utf-8"), str(path))
    return _FALLBACK


def read_policy_file(path: str | Path) -> PolicySource:
    path = Path(path)
    try:
        code = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyFileError(f"{path}: no such policy file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{path}: cannot read policy file: {exc}") from None
    return read_policy_source(code, name=str(path))


@dataclass(frozen=True)
class LoadedPolicy:
    """Callables the simulator drives: ``partition(view)`` and ``route(request, cluster)``."""

    partition: Callable[[Any], Any]
    route: Callable[[Any, Any], Any]
    params: Mapping[str, Any] = field(default_factory=dict)


def _policy_builtins() -> dict[str, Any]:
    """Only the built-ins and imports the static check allows: a second fence behind it."""
    allowed = set(ALLOWED_IMPORTS) | {"__future__"}
    real_import = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        if level != 0 or name not in allowed:
            raise ImportError(f"import of {name!r} is not allowed in a policy")
        return real_import(name, globals, locals, fromlist, level)

    table = {n: getattr(builtins, n) for n in ALLOWED_BUILTINS if hasattr(builtins, n)}
    table["__import__"] = guarded_import
    return table


def _execute(source: PolicySource) -> dict[str, Any]:
    module = types.ModuleType("policy")
    module.__dict__["__builtins__"] = _policy_builtins()
    exec(compile(source.code, source.name, "exec"), module.__dict__)  # noqa: S102 - trusted/sandboxed
    return module.__dict__


def _bind(func: Callable[..., Any], params: Mapping[str, Any]) -> Callable[..., Any]:
    frozen = types.MappingProxyType(dict(params))
    return lambda *args: func(*args, frozen)


def load_policy(source: PolicySource, params: Mapping[str, Any] | None = None) -> LoadedPolicy:
    """Execute a policy file in a fresh module (fresh module state per simulation).

    Missing decision points come from the fixed-chunk baseline file with its own defaults.
    """
    resolved = source.resolve_params(params)
    namespace = _execute(source)
    bound: dict[str, Callable[..., Any]] = {}
    fallback: dict[str, Any] | None = None
    fallback_params: dict[str, Any] = {}
    for point in DECISION_POINTS:
        if point in source.defines:
            func = namespace.get(point)
            if not callable(func):
                raise PolicyFileError(f"{source.name}: {point} is not a function once loaded")
            bound[point] = _bind(func, resolved)
            continue
        if fallback is None:
            base = _fallback_source()
            fallback = _execute(base)
            fallback_params = {t.name: resolved.get(t.name, t.default) for t in base.tunables}
        bound[point] = _bind(fallback[point], fallback_params)
    return LoadedPolicy(bound["partition"], bound["route"], types.MappingProxyType(resolved))
