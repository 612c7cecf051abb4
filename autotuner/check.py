"""Static check of a policy file: the "check" stage, run on the text before anything executes.

A proposal is untrusted code written by a model that will use any loophole, so the rules are an
allow-list wherever one is practical: allowed AST node types, allowed imports and the members of
each allowed module, allowed built-in names. What falls outside is refused with the line, the
construct and words a proposer can act on. The sandbox worker still enforces time, memory and
isolation limits; this check removes the routes a heuristic never needs (introspection,
imports, dunder attributes, string-driven attribute lookup) so that the worker's limits are the
second line of defence, not the only one.

Why the main rules hold together:

- Names. Every name a file reads is either bound in the file or an allowed built-in, and no file
  may bind a built-in's name anywhere (not even as a local). So a built-in name always means the
  built-in, and a forbidden one (``getattr``, ``eval``, ``type``...) can never be reached by name.
- Modules. An imported module's name may appear only as ``module.member`` with ``member`` from
  that module's allow-list, and may never be rebound. Allowed modules import others
  (``statistics.sys``, ``typing.sys``), so allowing whole modules would let ``sys`` through.
- Attributes. No attribute starting with ``_`` (so no dunders, no ``random._os``), and none of
  the frame, code, generator and traceback introspection names (``gi_frame``, ``f_globals``,
  ``tb_frame``, ``co_code``, ``mro``...). Attributes are only read, never set or deleted.
- Strings that act as attribute paths: ``str.format`` only on a string literal whose fields have
  no ``.attribute`` and no ``_`` in an index; ``format_map`` never. f-string expressions are
  ordinary AST and get the same checks as any other code.
- No classes (metaclasses, descriptors and dunder methods are the classic escape kit), no
  ``async``, no ``with``, no bare ``except:`` / ``except BaseException`` (which would swallow the
  worker's interrupts), no ``return``/``break``/``continue`` inside ``finally``.

``check_policy`` never raises: any input, however large or malformed, gives a result.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import re
import string
import symtable
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from autotuner.api_views import DECISION_ARGS, argument_names, point_views, where_field
from autotuner.check_scopes import scopes_for
from autotuner.check_views import view_issues
from autotuner.policy import (
    ALLOWED_BUILTINS,
    ALLOWED_IMPORTS,
    ALLOWED_MODULES,
    DECISION_POINTS,
    MAX_POLICY_BYTES,
    PARSE_LOCK,
    PolicyFileError,
    PolicySource,
    read_policy_source,
)

# --- limits -------------------------------------------------------------------------------------

MAX_LINES = 2_000
MAX_NODES = 20_000
MAX_DEPTH = 150  # AST nesting; ordinary code stays under 30
MAX_STR_LITERAL = 10_000  # characters (or bytes) in one string literal
MAX_INT_BITS = 256  # an integer literal or constant expression larger than this is refused
MAX_EXPONENT = 10_000  # a constant integer exponent above this is refused, whatever the base
MAX_SHIFT = 4_096
MAX_REPEAT_ITEMS = 100_000  # "ab" * N, [0] * N with constant N
MAX_ISSUES = 25

# warnings.catch_warnings swaps process-wide state, and CPython's AST conversion is not safe from
# several threads at once (see policy.PARSE_LOCK); proposers call the check from threads, so the
# parse, compile and analysis steps take turns.
_WARNINGS_LOCK = PARSE_LOCK

# --- allow-lists --------------------------------------------------------------------------------

# ALLOWED_MODULES, ALLOWED_IMPORTS and ALLOWED_BUILTINS are part of the file format, in
# autotuner.policy: the check refuses everything else, and the loader admits nothing else.

# Names that mean a built-in when unbound. Underscore names are left out (``_`` exists only in
# interactive sessions; dunders have their own rule); the site helpers are added by hand because
# they are missing from builtins when Python runs with -S.
BUILTIN_NAMES = frozenset(n for n in dir(builtins) if not n.startswith("_")) | frozenset(
    "print exit quit help copyright credits license breakpoint input".split()
)

# Why some refused built-ins are refused, in the proposer's terms.
_BUILTIN_HINTS = {
    "getattr": "attributes must be written out (obj.field)",
    "setattr": "policies may not set attributes",
    "delattr": "policies may not delete attributes",
    "hasattr": "read fields by name; the views' fields are documented",
    "eval": "policies may not run code from strings",
    "exec": "policies may not run code from strings",
    "compile": "policies may not run code from strings",
    "open": "policies have no file access",
    "input": "policies have no input",
    "print": "policies may not write output; return decisions only",
    "type": "use isinstance(x, int) to test a type",
    "object": "classes and object introspection are not allowed",
    "super": "classes are not allowed",
    "id": "object identities are not reproducible",
    "vars": "introspection is not allowed",
    "globals": "introspection is not allowed; name module-level variables directly",
    "locals": "introspection is not allowed",
    "dir": "introspection is not allowed",
    "breakpoint": "policies may not debug interactively",
    "memoryview": "not needed for arithmetic on the views",
}

# The refused built-ins a model reaches for, in the order the prompt names them.
REFUSED_BUILTINS: tuple[str, ...] = tuple(_BUILTIN_HINTS)

# Attribute names of frames, code, generators, coroutines and tracebacks: introspection routes
# to globals and builtins that need no dunder.
_INTROSPECTION_PREFIXES = ("gi_", "cr_", "ag_", "f_", "co_", "tb_", "func_", "im_")
_INTROSPECTION_NAMES = frozenset({"mro", "cell_contents", "format_map"})

_RESERVED_TOP_LEVEL = ("TUNABLES", *DECISION_POINTS)
_DECISION_ARGS = {point: argument_names(point) for point in DECISION_ARGS}

# AST node types a policy may contain. Anything else (ClassDef, With, async forms, Await,
# TryStar, type parameters, ...) is refused.
_ALLOWED_NODES: tuple[type, ...] = tuple(
    getattr(ast, n)
    for n in """Module FunctionDef Return Delete Assign AugAssign AnnAssign For While If Raise Try
    Assert Import ImportFrom Global Nonlocal Expr Pass Break Continue
    BoolOp NamedExpr BinOp UnaryOp Lambda IfExp Dict Set ListComp SetComp DictComp GeneratorExp
    Yield YieldFrom Compare Call FormattedValue JoinedStr Constant Attribute Subscript Starred
    Name List Tuple Slice Load Store Del And Or Add Sub Mult MatMult Div Mod Pow LShift RShift
    BitOr BitXor BitAnd FloorDiv Invert Not UAdd USub Eq NotEq Lt LtE Gt GtE Is IsNot In NotIn
    comprehension ExceptHandler arguments arg keyword alias
    Match match_case MatchValue MatchSingleton MatchSequence MatchMapping MatchClass MatchStar
    MatchAs MatchOr""".split()
    if hasattr(ast, n)
)

_NODE_HINTS = {
    "ClassDef": "class definitions are not allowed: a class brings dunder methods, metaclasses "
    "and descriptors, the classic ways out of a sandbox; keep state in dicts, tuples or "
    "collections.namedtuple and write plain functions",
    "AsyncFunctionDef": "async functions are not allowed; use a plain def",
    "AsyncFor": "async loops are not allowed; use a plain for loop",
    "AsyncWith": "'async with' is not allowed",
    "Await": "'await' is not allowed; policies are plain synchronous functions",
    "With": "'with' blocks are not allowed (no allowed object needs a context manager)",
    "TryStar": "'except*' is not allowed; use a plain 'except SomeError:'",
    "TypeAlias": "'type' aliases are not allowed",
    "TypeVar": "type parameters are not allowed",
    "ParamSpec": "type parameters are not allowed",
    "TypeVarTuple": "type parameters are not allowed",
}

_NESTED_IMPORT = "; and imports belong at the top of the file, not inside functions or blocks"

_NODE_CONSTRUCTS = {
    "ClassDef": "class",
    "AsyncFunctionDef": "async",
    "AsyncFor": "async",
    "AsyncWith": "async",
    "Await": "async",
    "With": "with",
}


@dataclass(frozen=True)
class CheckIssue:
    """One refusal. ``line`` is 1-based; 0 means the whole file (size, missing functions)."""

    line: int
    col: int
    construct: str  # a short stable tag, e.g. "import", "dunder", "builtin"
    message: str  # complete sentence for the proposer, starting with "line N:" when line > 0


@dataclass(frozen=True)
class CheckResult:
    """``ok`` iff no issues; ``source`` is set when the file parsed and its TUNABLES read."""

    ok: bool
    issues: tuple[CheckIssue, ...]
    source: PolicySource | None

    def reasons(self) -> list[str]:
        return [issue.message for issue in self.issues]


def _allowed_modules_text() -> str:
    return ", ".join(ALLOWED_IMPORTS)


def _members_text(module: str) -> str:
    return ", ".join(sorted(ALLOWED_MODULES[module]))


def _is_dunder_like(name: str) -> bool:
    return name.startswith("__")


def _introspection_attr(name: str) -> bool:
    return name.startswith(_INTROSPECTION_PREFIXES) or name in _INTROSPECTION_NAMES


class _Checker:
    """Walks one parsed module; collects issues instead of raising."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.issues: list[CheckIssue] = []
        self._seen: set[tuple[int, int, str]] = set()
        self.module_aliases: dict[str, str] = {}  # local name -> allowed module
        self.members: dict[str, tuple[str, str]] = {}  # from-imported name -> (module, member)
        self.bound: set[str] = set()
        self.parents: dict[int, ast.AST] = {}
        self.tunable_names = tunable_names(tree)
        self.in_tunables = tunables_node_ids(tree)  # its own rule explains what is wrong there

    # -- reporting --------------------------------------------------------------------------

    def add(self, node: ast.AST | None, construct: str, text: str) -> None:
        while node is not None and not getattr(node, "lineno", None):
            node = self.parents.get(id(node))  # a part without a position: its statement's
        line = getattr(node, "lineno", 0) or 0 if node is not None else 0
        col = getattr(node, "col_offset", 0) or 0 if node is not None else 0
        # One report per position and construct, and one per identical sentence on a line
        # (a chain like 2**2**2**... would otherwise repeat itself).
        keys = ((line, col, construct), (line, -1, text))
        if any(k in self._seen for k in keys):
            return
        self._seen.update(keys)
        message = f"line {line}: {text}" if line else text
        self.issues.append(CheckIssue(line, col, construct, message))

    # -- driver -----------------------------------------------------------------------------

    def run(self) -> None:
        for parent in ast.walk(self.tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[id(child)] = parent
        self.check_top_level()
        self.collect_bindings()
        for node in ast.walk(self.tree):
            self.check_node(node)
        for issue in view_issues(self.tree, self.parents):
            text = issue.text
            attr = getattr(issue.node, "attr", None)
            if attr in self.tunable_names:  # replica.max_chunk for params["max_chunk"]
                text = f"{text}; '{attr}' is a tunable: read it as params[\"{attr}\"]"
            self.add(issue.node, issue.construct, text)
        self.check_params_keys()

    def check_params_keys(self) -> None:
        """``params["x"]`` in partition or route where TUNABLES declares no "x": params holds
        exactly the tunables' values, so the read raises KeyError on the first call (a small
        model wrote params["now"] for replica.now, and a dry run could say only "KeyError")."""
        position = {"partition": 1, "route": 2}  # params' place in each signature
        for stmt in self.tree.body:
            if not isinstance(stmt, ast.FunctionDef) or stmt.name not in position:
                continue
            args = stmt.args.posonlyargs + stmt.args.args
            if len(args) <= position[stmt.name]:
                continue
            params = args[position[stmt.name]].arg
            for node in ast.walk(stmt):
                if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
                        and node.value.id == params and isinstance(node.slice, ast.Constant)
                        and isinstance(node.slice.value, str)):
                    continue
                key = node.slice.value
                if key in self.tunable_names:
                    continue
                self.add(node, "params-key",
                         params_key_advice(key, self.tunable_names, params, stmt.name))

    # -- top level --------------------------------------------------------------------------

    def check_top_level(self) -> None:
        seen_defs: dict[str, ast.AST] = {}
        for stmt in self.tree.body:
            if _is_docstring(stmt):
                continue  # docstring or a comment-like string
            if not isinstance(stmt, ast.FunctionDef):
                self.check_module_rebinding(stmt)
            if isinstance(stmt, ast.Import):
                self.check_import(stmt)
            elif isinstance(stmt, ast.ImportFrom):
                self.check_import_from(stmt)
            elif isinstance(stmt, ast.FunctionDef):
                if stmt.name in seen_defs:
                    self.add(
                        stmt,
                        "reserved-name",
                        f"'{stmt.name}' is defined twice; keep one definition",
                    )
                seen_defs[stmt.name] = stmt
                if stmt.name in _DECISION_ARGS:
                    self.check_decision_def(stmt)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                self.check_top_assign(stmt, seen_defs)
            elif isinstance(stmt, _ALLOWED_NODES):  # a refused construct gets its own reason
                self.add(
                    stmt,
                    "top-level",
                    f"{_describe(stmt)} at the top level is not allowed; the top level may hold "
                    "only a docstring, imports, TUNABLES, constant assignments and function "
                    "definitions, so move this code into a function",
                )
        if not any(name in seen_defs for name in DECISION_POINTS):
            self.add(
                None,
                "decision-point",
                "the file defines neither partition(replica, params) nor "
                "route(request, cluster, params); define at least one of them with def",
            )

    def check_module_rebinding(self, stmt: ast.stmt) -> None:
        """TUNABLES, partition and route are read statically; nothing else may rebind them."""
        for node in _walk_same_function(stmt):
            name = None
            if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
                name = node.target.id
            elif isinstance(node, ast.alias):
                name = node.asname or node.name
            if name in _RESERVED_TOP_LEVEL:
                self.add(
                    stmt,
                    "reserved-name",
                    f"'{name}' may only be bound by its own definition "
                    f"({'TUNABLES = {...}' if name == 'TUNABLES' else f'def {name}(...)'})",
                )

    def check_top_assign(self, stmt: ast.Assign | ast.AnnAssign, seen: dict[str, ast.AST]) -> None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if isinstance(stmt, ast.AnnAssign) and stmt.value is None:
            self.add(
                stmt,
                "top-level",
                "a bare annotation at the top level does nothing; assign a value or remove it",
            )
        names: list[str] = []
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, (ast.Attribute, ast.Subscript)):
                    self.add(
                        target,
                        "top-level",
                        "top-level assignments may only bind plain names (X = ...); set items "
                        "or fields inside a function instead",
                    )
                    return
                if isinstance(node, ast.Name):
                    names.append(node.id)
        if "TUNABLES" in names:
            ok_shape = (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and isinstance(stmt.value, ast.Dict)
            )
            if not ok_shape:
                self.add(
                    stmt,
                    "tunables",
                    "declare TUNABLES exactly once as "
                    "TUNABLES = {...} (a dict literal, one target, no annotation)",
                )
            if "TUNABLES" in seen:
                self.add(stmt, "tunables", "TUNABLES is assigned more than once; keep one")
            elif ok_shape:
                self.check_tunables_literal(stmt.value)  # type: ignore[arg-type]
            seen["TUNABLES"] = stmt
        for name in names:
            if name in DECISION_POINTS:
                self.add(
                    stmt,
                    "reserved-name",
                    f"'{name}' must be defined with def {name}(...): and not assigned",
                )

    def check_tunables_literal(self, table: ast.Dict) -> None:
        """Each entry and key that is not a literal, by name: TUNABLES is read before the
        policy runs, so ``"high": replica.max_batch_tokens`` can never work."""
        for key, spec in zip(table.keys, table.values, strict=True):
            if key is None:
                self.add(spec, "tunables", "TUNABLES may not use ** to merge dicts; write every "
                         "entry out")
                continue
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                self.add(key, "tunables", f"TUNABLES key {ast.unparse(key)[:40]} must be the "
                         'tunable\'s name in quotes, e.g. "chunk_size"')
                continue
            entry = key.value
            if not isinstance(spec, ast.Dict):
                self.add(spec, "tunables", f"TUNABLES entry '{entry}' must be a dict literal "
                         f'like {{"type": "int", "low": 1, "high": 100, "default": 10}}')
                continue
            for k, v in zip(spec.keys, spec.values, strict=True):
                name = k.value if isinstance(k, ast.Constant) and isinstance(k.value, str) else None
                if name is None:
                    self.add(v, "tunables", f"TUNABLES entry '{entry}' has a key that is not a "
                             "quoted name; use \"type\", \"low\", \"high\", \"default\", \"log\"")
                    continue
                try:
                    ast.literal_eval(v)
                    continue
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    pass
                want = {"type": 'the string "int" or "float"', "log": "True or False"}.get(
                    name, "a number literal")
                self.add(v, "tunables", f"TUNABLES entry '{entry}': key \"{name}\" must be "
                         f"{want}, not {ast.unparse(v)[:60]} (TUNABLES is read before the policy "
                         "runs, so it cannot use the views, params or computed values); write "
                         "a fixed value")

    def check_decision_def(self, fn: ast.FunctionDef) -> None:
        want = _DECISION_ARGS[fn.name]
        a = fn.args
        plain = (
            not a.posonlyargs
            and not a.vararg
            and not a.kwonlyargs
            and not a.kwarg
            and not a.defaults
            and len(a.args) == len(want)
        )
        if not plain:
            self.add(
                fn,
                "signature",
                f"{fn.name} must take exactly the positional parameters "
                f"({', '.join(want)}): def {fn.name}({', '.join(want)}): without defaults, "
                "*args, **kwargs or keyword-only parameters",
            )
        if fn.decorator_list:
            self.add(
                fn.decorator_list[0],
                "signature",
                f"{fn.name} may not be decorated; remove the decorator",
            )

    def check_nested_import(self, stmt: ast.Import | ast.ImportFrom) -> None:
        """An import inside a function or block: say in one message everything wrong with it,
        so that moving it to the top is not refused again for naming a module that is out."""
        before = len(self.issues)
        if isinstance(stmt, ast.Import):
            self.check_import(stmt, _NESTED_IMPORT)
        else:
            self.check_import_from(stmt, _NESTED_IMPORT)
        if len(self.issues) == before:
            self.add(
                stmt,
                "import",
                "imports are allowed only at the top of the file, not inside functions or "
                f"blocks; move '{ast.unparse(stmt)}' to the top",
            )

    def check_import(self, stmt: ast.Import, nested: str = "") -> None:
        """``nested``: the sentence that ends each message when the import is not at the top
        (it is then not registered: the statement is refused whatever it names)."""
        for alias in stmt.names:
            if "." in alias.name:
                self.add(
                    stmt,
                    "import",
                    f"import of '{alias.name}' is not allowed: submodules "
                    f"cannot be imported; policies may import only: "
                    f"{_allowed_modules_text()}{nested}",
                )
            elif alias.name not in ALLOWED_MODULES:
                self.add(
                    stmt,
                    "import",
                    f"import of '{alias.name}' is not allowed; policies "
                    f"may import only: {_allowed_modules_text()}{nested}",
                )
            elif not nested:
                self.module_aliases[alias.asname or alias.name] = alias.name

    def check_import_from(self, stmt: ast.ImportFrom, nested: str = "") -> None:
        module = stmt.module or ""
        if stmt.level:
            self.add(
                stmt,
                "import",
                "relative imports are not allowed; policies may import "
                f"only: {_allowed_modules_text()}{nested}",
            )
            return
        if module == "__future__" and [a.name for a in stmt.names] == ["annotations"]:
            return
        if module not in ALLOWED_MODULES:
            what = "submodules cannot be imported" if "." in module else "it is not allowed"
            self.add(
                stmt,
                "import",
                f"import from '{module}': {what}; policies may import "
                f"only: {_allowed_modules_text()}{nested}",
            )
            return
        for alias in stmt.names:
            if alias.name == "*":
                self.add(
                    stmt,
                    "import",
                    f"'from {module} import *' is not allowed; import the "
                    f"names you use, e.g. 'from {module} import name'{nested}",
                )
            elif alias.name not in ALLOWED_MODULES[module]:
                self.add(stmt, "module-member", self.member_message(module, alias.name) + nested)
            elif not nested:
                self.members[alias.asname or alias.name] = (module, alias.name)

    def member_message(self, module: str, member: str) -> str:
        if module == "random":
            return (
                f"'random.{member}' is not allowed: randomness must come from a seeded "
                "generator, e.g. _rng = random.Random(seed) with the seed from a tunable, "
                "then _rng.random() or _rng.choice(...)"
            )
        return (
            f"'{module}.{member}' is not allowed; from {module} policies may use only: "
            f"{_members_text(module)}"
        )

    # -- bindings ---------------------------------------------------------------------------

    def _binding_sites(self) -> Iterator[tuple[ast.AST, str]]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                yield node, node.id
            elif isinstance(node, ast.arg):
                yield node, node.arg
            elif isinstance(node, ast.FunctionDef):
                yield node, node.name
            elif isinstance(node, ast.alias) and node.name != "*":
                parent = self.parents.get(id(node))
                if isinstance(parent, ast.ImportFrom) and parent.module == "__future__":
                    continue
                yield parent or node, node.asname or node.name.split(".")[0]
            elif isinstance(node, ast.ExceptHandler) and node.name:
                yield node, node.name
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                for name in node.names:
                    yield node, name
            elif isinstance(node, (getattr(ast, "MatchAs", ()), getattr(ast, "MatchStar", ()))):
                if node.name:
                    yield node, node.name
            elif isinstance(node, getattr(ast, "MatchMapping", ())) and node.rest:
                yield node, node.rest

    def collect_bindings(self) -> None:
        import_nodes = {id(s) for s in self.tree.body if isinstance(s, ast.Import)}
        for node, name in self._binding_sites():
            self.bound.add(name)
            if _is_dunder_like(name):
                self.add(
                    node,
                    "dunder",
                    f"the name '{name}' is not allowed: names starting "
                    "with '__' are reserved; rename it",
                )
            elif name in BUILTIN_NAMES:
                self.add(
                    node,
                    "shadow-builtin",
                    f"'{name}' is a built-in name and may not be "
                    f"reused for a variable, parameter, function or import; rename it "
                    f"(e.g. '{name}_' or a more specific name)",
                )
            elif name in self.module_aliases and id(node) not in import_nodes:
                self.add(
                    node,
                    "module-name",
                    f"'{name}' names the imported module "
                    f"'{self.module_aliases[name]}' and may not be rebound; pick another "
                    "name",
                )
            if isinstance(node, (ast.Global, ast.Nonlocal)) and name in _RESERVED_TOP_LEVEL:
                self.add(
                    node,
                    "reserved-name",
                    f"'{name}' may not be declared global or reassigned inside a function",
                )

    # -- per node ---------------------------------------------------------------------------

    def inside_refused(self, node: ast.AST) -> bool:
        """Whether an enclosing node is itself refused (its reason covers its parts)."""
        parent = self.parents.get(id(node))
        while parent is not None:
            if not isinstance(parent, _ALLOWED_NODES):
                return True
            parent = self.parents.get(id(parent))
        return False

    def check_node(self, node: ast.AST) -> None:
        if not isinstance(node, _ALLOWED_NODES):
            if self.inside_refused(node):
                return
            kind = type(node).__name__
            hint = _NODE_HINTS.get(kind)
            text = hint or f"{kind}: this construct is not allowed in policies"
            self.add(node, _NODE_CONSTRUCTS.get(kind, "node"), text)
            return
        if isinstance(node, ast.Name):
            self.check_name(node)
        elif isinstance(node, ast.Attribute):
            self.check_attribute(node)
        elif isinstance(node, ast.keyword) and node.arg and _is_dunder_like(node.arg):
            self.add(
                node,
                "dunder",
                f"keyword argument '{node.arg}': names starting with '__' are not allowed",
            )
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if self.parents.get(id(node)) is not self.tree:
                self.check_nested_import(node)
        elif isinstance(node, ast.comprehension) and node.is_async:
            self.add(node.target, "async", "async comprehensions are not allowed")
        elif isinstance(node, ast.ExceptHandler):
            self.check_except(node)
        elif isinstance(node, ast.Try):
            self.check_finally(node)
        elif isinstance(node, ast.Constant):
            self.check_constant(node)
        elif isinstance(node, ast.BinOp):
            self.check_binop(node)
        elif isinstance(node, ast.Call):
            self.check_call(node)
        elif isinstance(node, ast.FunctionDef) and getattr(node, "type_params", None):
            self.add(node, "node", "type parameters (def f[T]) are not allowed")
        elif isinstance(node, getattr(ast, "MatchClass", ())):
            for attr in node.kwd_attrs:
                if attr.startswith("_") or _introspection_attr(attr):
                    self.add(
                        node,
                        "dunder" if _is_dunder_like(attr) else "private-attribute",
                        f"class pattern keyword '{attr}' reads "
                        "an attribute that policies may not read; match on public "
                        "fields only",
                    )

    def check_name(self, node: ast.Name) -> None:
        name = node.id
        if _is_dunder_like(name):
            self.add(
                node,
                "dunder",
                f"the name '{name}' is not allowed: names starting with "
                "'__' give access to interpreter internals",
            )
            return
        if name in self.module_aliases and isinstance(node.ctx, ast.Load):
            parent = self.parents.get(id(node))
            if not (isinstance(parent, ast.Attribute) and parent.value is node):
                example = min(ALLOWED_MODULES[self.module_aliases[name]])
                self.add(
                    node,
                    "module-name",
                    f"the module '{name}' may only be used as "
                    f"{name}.<name> (e.g. {name}.{example}); it may not be passed around "
                    "or stored",
                )
            return
        if isinstance(node.ctx, ast.Load) and name not in self.bound and (
                id(node) not in self.in_tunables):
            if name in BUILTIN_NAMES and name not in ALLOWED_BUILTINS:
                hint = _BUILTIN_HINTS.get(name, "it is not needed by a heuristic")
                self.add(
                    node,
                    "builtin",
                    f"the built-in '{name}' is not allowed ({hint}); "
                    "allowed built-ins are: " + ", ".join(sorted(ALLOWED_BUILTINS)),
                )
            elif name not in ALLOWED_BUILTINS:
                self.add(node, "undefined-name",
                         undefined_name_advice(name, self.tunable_names,
                                               where=self.function_name(node)))

    def function_name(self, node: ast.AST) -> str:
        """The innermost function a node is in ("" at module level)."""
        cur = self.parents.get(id(node))
        while cur is not None and not isinstance(cur, ast.FunctionDef):
            cur = self.parents.get(id(cur))
        return cur.name if isinstance(cur, ast.FunctionDef) else ""

    def check_attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if _is_dunder_like(attr):
            self.add(
                node,
                "dunder",
                f"the attribute '.{attr}' is not allowed: dunder "
                "attributes give access to interpreter internals; read documented "
                "fields only",
            )
            return
        if attr.startswith("_"):
            self.add(
                node,
                "private-attribute",
                f"the attribute '.{attr}' is not allowed: "
                "attributes starting with '_' are private; use public fields and "
                "functions only",
            )
            return
        if attr == "format_map":
            self.add(
                node,
                "format-string",
                "'.format_map' is not allowed (its fields can read attributes); use an f-string",
            )
            return
        if _introspection_attr(attr):
            self.add(
                node,
                "introspection-attribute",
                f"the attribute '.{attr}' is not "
                "allowed: frame, code, generator, traceback and class introspection is "
                "forbidden; a heuristic only needs the values passed in",
            )
            return
        if not isinstance(node.ctx, ast.Load):
            self.add(
                node,
                "attribute-assignment",
                f"setting or deleting '.{attr}' is not "
                "allowed; keep state in module-level variables or dicts instead",
            )
        if isinstance(node.value, ast.Name) and node.value.id in self.module_aliases:
            module = self.module_aliases[node.value.id]
            if attr not in ALLOWED_MODULES[module]:
                self.add(node, "module-member", self.member_message(module, attr))
        if attr == "format":
            self.check_format_call(node)

    def check_format_call(self, node: ast.Attribute) -> None:
        receiver = node.value
        if not (isinstance(receiver, ast.Constant) and isinstance(receiver.value, str)):
            self.add(
                node,
                "format-string",
                ".format may be used only directly on a string "
                'literal ("{} tokens".format(n)); use an f-string instead',
            )
            return
        problem = _format_fields_problem(receiver.value)
        if problem:
            self.add(node, "format-string", f"format string {receiver.value[:60]!r}: {problem}")

    def check_except(self, node: ast.ExceptHandler) -> None:
        if node.type is None:
            self.add(
                node,
                "bare-except",
                "bare 'except:' is not allowed (it would swallow the "
                "worker's time limit); catch specific errors, e.g. "
                "'except (ValueError, ZeroDivisionError):' or 'except Exception:'",
            )
            return
        for sub in ast.walk(node.type):
            if isinstance(sub, ast.Name) and sub.id in {
                "BaseException",
                "SystemExit",
                "KeyboardInterrupt",
                "GeneratorExit",
            }:
                self.add(
                    node,
                    "except-base-exception",
                    f"'except {sub.id}' is not allowed "
                    "(it would swallow the worker's interrupts); catch 'Exception' or "
                    "specific errors instead",
                )

    def check_finally(self, node: ast.Try) -> None:
        for stmt in node.finalbody:
            for sub in _walk_same_function(stmt):
                if isinstance(sub, (ast.Return, ast.Break, ast.Continue)):
                    self.add(
                        sub,
                        "finally-control",
                        f"'{_describe(sub)}' inside 'finally' is "
                        "not allowed (it would swallow any exception, the worker's "
                        "interrupts included); move it after the try statement",
                    )

    def check_constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, (str, bytes)) and len(value) > MAX_STR_LITERAL:
            self.add(
                node,
                "literal-size",
                f"a string literal of {len(value)} characters is "
                f"too long (at most {MAX_STR_LITERAL})",
            )
        elif isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > MAX_INT_BITS:
                self.add(
                    node,
                    "literal-size",
                    f"an integer literal of {value.bit_length()} "
                    f"bits is too large (at most {MAX_INT_BITS}); use a float",
                )

    def check_binop(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Pow):
            if self.check_exponent(node, node.right):
                return
        elif isinstance(node.op, ast.LShift):
            amount = _const_value(node.right)
            if isinstance(amount, int) and amount > MAX_SHIFT:
                self.add(
                    node,
                    "constant-bomb",
                    f"shifting by {amount} bits builds a huge "
                    "number; use floats for large magnitudes",
                )
        elif isinstance(node.op, ast.Mult):
            for seq, count in ((node.left, node.right), (node.right, node.left)):
                n = _const_value(count)
                size = _literal_len(seq)
                if isinstance(n, int) and size is not None and size * n > MAX_REPEAT_ITEMS:
                    self.add(
                        node,
                        "constant-bomb",
                        f"repeating a literal {n} times builds a "
                        f"huge object (at most {MAX_REPEAT_ITEMS} items)",
                    )
                    return
        if _const_value(node) is _TOO_BIG:
            self.add(
                node,
                "constant-bomb",
                "this constant expression is huge (a number of more "
                f"than {MAX_INT_BITS} bits); use floats or smaller numbers",
            )

    def check_exponent(self, node: ast.AST, exponent: ast.AST) -> bool:
        value = _const_value(exponent)
        if value is _TOO_BIG or (
            isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXPONENT
        ):
            self.add(
                node,
                "constant-bomb",
                f"an integer exponent above {MAX_EXPONENT} is not "
                "allowed (it would build a huge number); use floats, e.g. math.exp",
            )
            return True
        return False

    def check_call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "pow" and len(node.args) >= 2:
            self.check_exponent(node, node.args[1])
        is_random = (
            isinstance(func, ast.Attribute)
            and func.attr == "Random"
            and isinstance(func.value, ast.Name)
            and self.module_aliases.get(func.value.id) == "random"
        ) or (isinstance(func, ast.Name) and self.members.get(func.id) == ("random", "Random"))
        is_seed = isinstance(func, ast.Attribute) and func.attr == "seed"
        if (is_random or is_seed) and not node.args and not node.keywords:
            self.add(
                node,
                "unseeded-random",
                "a random generator must be seeded for "
                "reproducible scores: random.Random(seed) with the seed from a tunable, "
                "e.g. random.Random(params['seed'])",
            )


def _is_docstring(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def _describe(node: ast.AST) -> str:
    return {
        "Expr": "an expression statement",
        "If": "an if statement",
        "For": "a for loop",
        "While": "a while loop",
        "Try": "a try statement",
        "AugAssign": "an augmented assignment",
        "Global": "a global statement",
        "Return": "return",
        "Break": "break",
        "Continue": "continue",
    }.get(type(node).__name__, type(node).__name__)


def _walk_same_function(node: ast.AST) -> Iterator[ast.AST]:
    """Walk ``node`` without descending into nested functions or lambdas."""
    stack = [node]
    while stack:
        cur = stack.pop()
        yield cur
        for child in ast.iter_child_nodes(cur):
            if not isinstance(child, (ast.FunctionDef, ast.Lambda, ast.AsyncFunctionDef)):
                stack.append(child)


def _format_fields_problem(template: str, depth: int = 0) -> str | None:
    """Why a str.format template is unsafe, or None: no attribute paths, no '_' in indexes."""
    if depth > 2:
        return "format specs nest too deeply"
    try:
        parsed = list(string.Formatter().parse(template))
    except (ValueError, IndexError):
        return "it is not a valid format string"
    for _literal, field, spec, _conversion in parsed:
        if field is None:
            continue
        if "." in field:
            return (
                "fields may not read attributes ('{0.name}'); pass the values themselves "
                "or use an f-string"
            )
        if "[" in field and "_" in field:
            return "fields may not index with names containing '_'"
        if spec:
            problem = _format_fields_problem(spec, depth + 1)
            if problem:
                return problem
    return None


class _TooBig:
    """Marker: a constant expression whose value would be too large to build."""


_TOO_BIG = _TooBig()


def _const_value(node: ast.AST, depth: int = 0) -> object:
    """Value of a small constant numeric expression, _TOO_BIG, or None when not constant."""
    if depth > 20:
        return None
    if isinstance(node, ast.Constant):
        v = node.value
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _const_value(node.operand, depth + 1)
        if v is None or v is _TOO_BIG:
            return v
        return -v if isinstance(node.op, ast.USub) else v
    if not isinstance(node, ast.BinOp):
        return None
    left = _const_value(node.left, depth + 1)
    right = _const_value(node.right, depth + 1)
    if left is _TOO_BIG or right is _TOO_BIG:
        return _TOO_BIG
    if left is None or right is None:
        return None
    try:
        if isinstance(node.op, ast.Pow):
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * abs(left).bit_length() > MAX_INT_BITS * 4:
                    return _TOO_BIG
            elif isinstance(right, (int, float)) and abs(right) > 1e6:
                return None  # float overflow is an ordinary runtime error, not a bomb
            result = left**right
        elif isinstance(node.op, ast.LShift):
            if isinstance(right, int) and right > MAX_SHIFT:
                return _TOO_BIG
            result = left << right
        elif isinstance(node.op, ast.Mult):
            result = left * right
        elif isinstance(node.op, ast.Add):
            result = left + right
        elif isinstance(node.op, ast.Sub):
            result = left - right
        else:
            return None
    except Exception:  # division by zero, overflow, types: not our concern here
        return None
    if isinstance(result, int) and result.bit_length() > MAX_INT_BITS * 4:
        return _TOO_BIG
    return result if isinstance(result, (int, float)) else None


def _literal_len(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        return len(node.value)
    if isinstance(node, (ast.List, ast.Tuple)):
        return len(node.elts)
    return None


def _depth_and_count(tree: ast.AST) -> tuple[int, int, ast.AST | None]:
    """Deepest nesting, node count and the deepest node, without recursion."""
    deepest, count, where = 0, 0, None
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > deepest:
            deepest, where = depth, node
        if count > MAX_NODES:
            break
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest, count, where


# A list of names a reason spells out (allowed built-ins, a view's fields, a module's members).
_NAME_LIST = re.compile(r"(?<=: )[A-Za-z_][A-Za-z0-9_]*(?:, [A-Za-z_][A-Za-z0-9_]*){4,}")


def _without_repeated_lists(issues: list[CheckIssue]) -> list[CheckIssue]:
    """Each long list of names spelt out once: six refused built-ins would otherwise end six
    reasons with the same seventy names, and a model reads the first anyway."""
    seen: set[str] = set()
    out = []
    for issue in issues:
        def once(match: re.Match[str]) -> str:
            if match.group(0) in seen:
                return "(listed above)"
            seen.add(match.group(0))
            return match.group(0)

        message = _NAME_LIST.sub(once, issue.message)
        out.append(issue if message == issue.message else
                   CheckIssue(issue.line, issue.col, issue.construct, message))
    return out


def _result(issues: list[CheckIssue], source: PolicySource | None = None) -> CheckResult:
    issues = _without_repeated_lists(sorted(issues, key=lambda i: (i.line, i.col)))
    if len(issues) > MAX_ISSUES:
        extra = len(issues) - MAX_ISSUES
        issues = issues[:MAX_ISSUES] + [
            CheckIssue(0, 0, "too-many-issues", f"... and {extra} more issues of the same kinds")
        ]
    ok = not issues
    return CheckResult(ok, tuple(issues), source)


def _file_issue(construct: str, message: str, line: int = 0) -> CheckIssue:
    return CheckIssue(line, 0, construct, f"line {line}: {message}" if line else message)


def _precheck_text(code: object) -> tuple[str | None, list[CheckIssue]]:
    """Size, encoding and null bytes, before the parser sees anything."""
    if isinstance(code, (bytes, bytearray)):
        if len(code) > MAX_POLICY_BYTES:
            return None, [
                _file_issue(
                    "size", f"the file is larger than {MAX_POLICY_BYTES} bytes; make it shorter"
                )
            ]
        try:
            code = bytes(code).decode("utf-8")
        except UnicodeDecodeError:
            return None, [_file_issue("encoding", "the file is not valid UTF-8 text")]
    if not isinstance(code, str):
        return None, [_file_issue("encoding", f"a policy must be text, got {type(code).__name__}")]
    code = code.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as Python itself accepts
    if len(code) > MAX_POLICY_BYTES:
        return None, [
            _file_issue(
                "size", f"the file is larger than {MAX_POLICY_BYTES} bytes; make it shorter"
            )
        ]
    try:
        size = len(code.encode("utf-8"))
    except UnicodeEncodeError:
        return None, [
            _file_issue(
                "encoding",
                "the file is not valid UTF-8 text (it contains an unpaired surrogate character)",
            )
        ]
    if size > MAX_POLICY_BYTES:
        return None, [
            _file_issue(
                "size", f"the file is larger than {MAX_POLICY_BYTES} bytes; make it shorter"
            )
        ]
    lines = code.count("\n") + 1
    if lines > MAX_LINES:
        return None, [
            _file_issue(
                "size", f"the file has {lines} lines, more than {MAX_LINES}; make it shorter"
            )
        ]
    if "\x00" in code:
        line = code.count("\n", 0, code.index("\x00")) + 1
        return None, [_file_issue("null-byte", "the file contains a null byte; remove it", line)]
    return code, []


def _parse(code: str, name: str) -> tuple[ast.Module | None, list[CheckIssue]]:
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code, filename="<policy>"), []
    except SyntaxError as exc:
        line = exc.lineno or 0
        msg = exc.msg or "invalid syntax"
        return None, [
            _file_issue(
                "syntax",
                f"syntax error: {msg}; the file must be valid "
                f"Python {sys.version_info.major}.{sys.version_info.minor}",
                line,
            )
        ]
    except (ValueError, MemoryError, RecursionError, OverflowError) as exc:
        return None, [
            _file_issue(
                "syntax",
                f"the file cannot be parsed ({type(exc).__name__}); "
                "simplify deeply nested expressions",
            )
        ]


def _compile_issues(tree: ast.Module) -> list[CheckIssue]:
    """Errors the parser leaves to the compiler ('return' outside function, bad nonlocal...)."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(tree, "<policy>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return [_file_issue("syntax", f"syntax error: {exc.msg}", exc.lineno or 0)]
    except Exception as exc:  # ValueError from odd trees, MemoryError, RecursionError
        return [_file_issue("syntax", f"the file cannot be compiled ({type(exc).__name__})")]
    return []


def _scope_issues(text: str, tree: ast.Module,
                  reported: Sequence[CheckIssue] = ()) -> list[CheckIssue]:
    """Second opinion on names, from the compiler's own scope analysis (``symtable``).

    The AST rules accept a name when it is bound anywhere in the file; Python resolves a name
    that its scope does not bind through the module and then builtins. Here every free global
    reference must be bound at module level or be an allowed built-in, exactly as Python sees it.
    """
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            top = symtable.symtable(text, "<policy>", "exec")
    except Exception as exc:  # the compile step reports syntax problems with lines
        return [_file_issue("syntax", f"the file cannot be analysed ({type(exc).__name__})")]
    module_bound = {
        sym.get_name()
        for sym in top.get_symbols()
        if sym.is_assigned() or sym.is_imported() or sym.is_namespace()
    }
    bad: set[str] = set()
    stack = [top]
    while stack:
        table = stack.pop()
        stack.extend(table.get_children())
        for sym in table.get_symbols():
            name = sym.get_name()
            if not sym.is_referenced() or name in module_bound or name in ALLOWED_BUILTINS:
                continue
            if table is top or sym.is_global():
                bad.add(name)
    issues = []
    parents = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    scopes = scopes_for(tree, parents)
    tunables = tunable_names(tree)
    in_tunables = tunables_node_ids(tree)
    for name in sorted(bad):
        loads = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
        ]
        loads = [n for n in loads if id(n) not in in_tunables]
        if not loads:
            continue  # only inside TUNABLES, whose own reason says what to write instead
        # The use that no enclosing scope binds: a legal use of a local of the same name in
        # another function must not take the blame.
        unbound = [n for n in loads if scopes.resolve(n, name) is None] or loads
        node = min(unbound, key=lambda n: (n.lineno, n.col_offset), default=None)
        line = getattr(node, "lineno", 0)
        if any(i.line == line and f"'{name}'" in i.message for i in reported):
            continue  # the AST rules already said what is wrong with this name here
        where = scopes.scope_name(scopes.enclosing(node)) if node is not None else ""
        locals_of = [f for f in scopes.functions_binding(name) if f != where]
        issues.append(
            _file_issue(
                "undefined-name",
                undefined_name_advice(name, tunables, where=where, locals_of=locals_of),
                line,
            )
        )
    return issues


def tunables_node_ids(tree: ast.Module) -> frozenset[int]:
    return frozenset(id(n) for stmt in tree.body if isinstance(stmt, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id == "TUNABLES" for t in stmt.targets)
                     for n in ast.walk(stmt.value))


def tunable_names(tree: ast.Module) -> frozenset[str]:
    """The names TUNABLES declares (string keys of the dict literal), read from the AST."""
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "TUNABLES" for t in stmt.targets)):
            return frozenset(k.value for k in stmt.value.keys
                             if isinstance(k, ast.Constant) and isinstance(k.value, str))
    return frozenset()


def params_key_advice(key: str, tunables: frozenset[str], params: str = "params",
                      point: str | None = None) -> str:
    """Why ``params[key]`` fails, phrased as the fix: declare it, or read the field of that name
    on a view ``point`` (partition or route) is given."""
    declared = ", ".join(sorted(tunables)) or "none"
    text = (f"{params}[{key!r}]: TUNABLES has no entry {key!r}, and {params} holds only the "
            f"tunables' values (declared: {declared}); declare {key!r} in TUNABLES")
    reachable = point_views(point) if point else None
    fields = [f"{v.expr}.{key}" for v in where_field(key)
              if reachable is None or v in reachable][:2]
    if fields:
        text += f", or read the field {' or '.join(fields)}"
    close = difflib.get_close_matches(key, sorted(tunables), n=1, cutoff=0.6)
    if close:
        text += f" (did you mean {params}[{close[0]!r}]?)"
    return text


def undefined_name_advice(name: str, tunables: frozenset[str] = frozenset(), *, where: str = "",
                          locals_of: list[str] | None = None) -> str:
    """Why a name is refused, phrased as the fix: a tunable is read from params, a math
    function is imported at the top, a local of another function is not visible here."""
    used = f"the name '{name}' is used in {where}" if where and where != "the module" else (
        f"the name '{name}' is used")
    there = " there" if where else ""
    if name in tunables:
        return (f"{used} but is not defined{there}: '{name}' is a tunable, so read it as "
                f'params["{name}"]')
    homes = [m for m, members in ALLOWED_MODULES.items() if name in members]
    if homes:
        module = "math" if "math" in homes else homes[0]
        return (f"{used} but is not defined: import it from {module} at the top of the file "
                f"('from {module} import {name}'), or write {module}.{name} after "
                f"'import {module}'")
    if locals_of:
        return (f"{used} but is not defined{there}: it is a local variable of "
                f"{' and '.join(locals_of)}, which {where or 'this code'} cannot see; compute "
                "it here, or pass it as an argument")
    if where and where != "the module":
        # No module has it, so the import list only distracted: Qwen2.5-Coder-1.5B, told
        # "define it, or import it from an allowed module (math, random, ...)", sent the same
        # file back.
        return (f"{used} but is never assigned: no line of {where} or of the module sets "
                f"'{name}'; assign {name} = ... in {where} before this line, or use a value "
                f"{where} already has")
    return (f"{used} but is neither defined in this file nor an allowed built-in; define it, "
            f"or import it from an allowed module ({_allowed_modules_text()})")


def _tunable_entry_line(tree: ast.Module, reason: str) -> int:
    """The line of the TUNABLES entry (and key) a reason names ("TUNABLES['x']['high'] ..."),
    so that it points at the entry, not at the first line of a long table; 0 if none."""
    found = re.match(r"TUNABLES\[('[^']*'|\"[^\"]*\")\](?:\[('[^']*'|\"[^\"]*\")\])?", reason)
    if not found:
        return 0
    entry, key = (ast.literal_eval(g) if g else None for g in found.groups())
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "TUNABLES" for t in stmt.targets)):
            for k, v in zip(stmt.value.keys, stmt.value.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == entry:
                    if key is not None and isinstance(v, ast.Dict):
                        for kk, vv in zip(v.keys, v.values, strict=True):
                            if isinstance(kk, ast.Constant) and kk.value == key:
                                return vv.lineno
                    return k.lineno
    return 0


def _read_tunables(
    code: str, name: str, tree: ast.Module
) -> tuple[PolicySource | None, list[CheckIssue]]:
    line = next(
        (
            s.lineno
            for s in tree.body
            if isinstance(s, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "TUNABLES" for t in s.targets)
        ),
        0,
    )
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it parses again, with the same escape warnings
            return read_policy_source(code, name="<policy>"), []
    except PolicyFileError as exc:
        text = str(exc)
        for prefix in ("<policy> line ", "<policy>: ", "<policy>"):
            if text.startswith(prefix):
                text = text[len(prefix) :]
                if prefix == "<policy> line ":
                    text = text.split(": ", 1)[-1]
                break
        construct = "decision-point" if "neither" in text else "tunables"
        if construct == "tunables":
            line = _tunable_entry_line(tree, text) or line
        return None, [_file_issue(construct, text, line if construct == "tunables" else 0)]
    except Exception as exc:  # unhashable keys, deep literals: refuse, never crash
        return None, [
            _file_issue(
                "tunables",
                "TUNABLES must be a literal dict of dicts of plain "
                f"numbers and strings ({type(exc).__name__})",
                line,
            )
        ]


def check_policy(code: str, name: str = "<policy>") -> CheckResult:
    """Statically check a policy file's text. Never executes it and never raises.

    ``name`` is for callers' bookkeeping (it becomes ``source.name``); messages use line numbers
    only, since the proposer knows which file it wrote.
    """
    try:
        return _check(code, name)
    except Exception as exc:  # a checker bug refuses the file rather than crashing the campaign
        return _result(
            [
                _file_issue(
                    "internal",
                    f"the checker could not analyse this file ({type(exc).__name__}); simplify it",
                )
            ]
        )


def check_reasons(code: str) -> list[str]:
    """The proposers' ``CheckFn``: the reasons a file is refused, empty when it passes."""
    return check_policy(code).reasons()


def _check(code: object, name: str) -> CheckResult:
    text, issues = _precheck_text(code)
    if text is None:
        return _result(issues)
    tree, issues = _parse(text, name)
    if tree is None:
        return _result(issues)
    if not any(not _is_docstring(stmt) for stmt in tree.body):
        return _result([_file_issue(
            "empty", "the file has no code: a policy declares TUNABLES = {...} (an empty dict is "
            "fine) and defines partition(replica, params), route(request, cluster, params) or both",
        )])
    depth, count, deepest = _depth_and_count(tree)
    if count > MAX_NODES:
        return _result(
            [
                _file_issue(
                    "nodes", f"the file has more than {MAX_NODES} syntax nodes; make it shorter"
                )
            ]
        )
    if depth > MAX_DEPTH:
        line = getattr(deepest, "lineno", 0) or 0
        return _result(
            [
                _file_issue(
                    "depth", f"code is nested more than {MAX_DEPTH} levels deep; flatten it", line
                )
            ]
        )
    checker = _Checker(tree)
    checker.run()
    issues = list(checker.issues)
    compile_issues = _compile_issues(tree)
    if not issues:
        issues.extend(compile_issues)
    if not compile_issues:  # names are reported even beside other problems
        issues.extend(_scope_issues(text, tree, issues))
    source, tunable_issues = _read_tunables(text, name, tree)
    constructs = {i.construct for i in issues}
    issues.extend(i for i in tunable_issues if i.construct not in constructs)
    if source is not None and name != source.name:
        source = PolicySource(name, source.code, source.tunables, source.defines)
    return _result(issues, source)
