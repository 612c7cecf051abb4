"""Which scope binds which names in a policy file, and the scope a name resolves in.

So that a reason about a name points at the use that is wrong, not at its first use in another
function, and so that the view inference (``autotuner.check_views``) types each name per scope.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp, ast.SetComp,
          ast.DictComp, ast.GeneratorExp)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


class Scopes:
    """Which scope binds which names, and how to find the scope a Name resolves in."""

    def __init__(self, tree: ast.Module, parents: dict[int, ast.AST]):
        self.tree = tree
        self.parents = parents
        self.binds: dict[int, set[str]] = {id(tree): set()}
        self.globals_of: dict[int, set[str]] = {}
        self._enclosing: dict[int, ast.AST] = {}
        self._resolved: dict[tuple[int, str], ast.AST | None] = {}
        for node in ast.walk(tree):
            if isinstance(node, SCOPES):
                self.binds.setdefault(id(node), set())
        for _node, name, scope in self._sites():
            self.binds[id(scope)].add(name)

    def enclosing(self, node: ast.AST) -> ast.AST:
        """The scope a node is evaluated in. A function's defaults and decorators, and a
        comprehension's first iterable, are evaluated in the scope around it."""
        found = self._enclosing.get(id(node))
        if found is None:
            found = self._enclosing[id(node)] = self._find_enclosing(node)
        return found

    def _find_enclosing(self, node: ast.AST) -> ast.AST:
        path = [node]
        cur = self.parents.get(id(node))
        while cur is not None:
            if isinstance(cur, SCOPES):
                below = path[-1]
                if isinstance(cur, FUNCTIONS):
                    outside = below is cur.args or below in getattr(cur, "decorator_list", ())
                    outside = outside or below is getattr(cur, "returns", None)
                    # an ast.arg names the function's own parameter: it binds inside
                    if outside and isinstance(node, ast.arg) and below is cur.args:
                        outside = False
                else:
                    first = cur.generators[0].iter
                    outside = len(path) >= 2 and path[-2] is first
                if not outside:
                    return cur
            path.append(cur)
            cur = self.parents.get(id(cur))
        return self.tree

    def function_of(self, node: ast.AST) -> ast.AST:
        """The function (or module) scope: where a walrus in a comprehension binds."""
        scope = self.enclosing(node)
        while not isinstance(scope, (*FUNCTIONS, ast.Module)):
            scope = self.enclosing(scope)
        return scope

    def _sites(self) -> Iterator[tuple[ast.AST, str, ast.AST]]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                parent = self.parents.get(id(node))
                if isinstance(parent, ast.NamedExpr) and parent.target is node:
                    yield node, node.id, self.function_of(parent)
                else:
                    yield node, node.id, self.enclosing(node)
            elif isinstance(node, ast.arg):
                yield node, node.arg, self.enclosing(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield node, node.name, self.enclosing(node)
            elif isinstance(node, ast.alias) and node.name != "*":
                yield node, node.asname or node.name.split(".")[0], self.enclosing(node)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                yield node, node.name, self.enclosing(node)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                scope = self.enclosing(node)
                for name in node.names:
                    self.globals_of.setdefault(id(scope), set()).add(name)
            elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
                yield node, node.name, self.enclosing(node)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                yield node, node.rest, self.enclosing(node)

    def resolve(self, node: ast.AST, name: str) -> ast.AST | None:
        """The scope whose binding of ``name`` a use at ``node`` reads, or None (a built-in,
        or nothing). A ``global`` declaration sends it to the module."""
        key = (id(node), name)
        if key not in self._resolved:
            self._resolved[key] = self._resolve(node, name)
        return self._resolved[key]

    def _resolve(self, node: ast.AST, name: str) -> ast.AST | None:
        scope: ast.AST | None = self.enclosing(node)
        while scope is not None:
            if name in self.globals_of.get(id(scope), ()):
                break
            if name in self.binds.get(id(scope), ()):
                return scope
            if scope is self.tree:
                return None
            scope = self.enclosing(scope)
        return self.tree if name in self.binds[id(self.tree)] else None

    def scope_name(self, scope: ast.AST | None) -> str:
        while scope is not None and not isinstance(scope, (ast.FunctionDef, ast.Module)):
            scope = self.enclosing(scope)
        return scope.name if isinstance(scope, ast.FunctionDef) else "the module"

    def functions_binding(self, name: str) -> list[str]:
        """Names of the functions in which ``name`` is a local (for "it is a local of X")."""
        out = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef) and name in self.binds.get(id(node), ()):
                out.append(node.name)
        return out


def scopes_for(tree: ast.Module, parents: dict[int, ast.AST]) -> Scopes:
    return Scopes(tree, parents)
