"""The package's import graph, read from the source with ast (nothing is imported).

`python tests/import_graph.py [PACKAGE_DIR]` prints the counts the layering test checks:
import cycles between modules, imports of another module's private names, and imports
inside functions (other than of optional dependencies).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

OPTIONAL = {"sklearn", "matplotlib", "torch", "distributed"}  # optional extras, imported where used


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(root: Path):
    """(module, imported module, names, in_function) for every import in the package."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    for name, path in sorted(modules.items()):
        tree = ast.parse(path.read_text())
        in_function = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(n) for n in ast.walk(fn))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield name, alias.name, [], id(node) in in_function
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, path.name == "__init__.py", node)
                names = [a.name for a in node.names]
                # "from pkg import module" imports the module itself
                for n in names:
                    if f"{target}.{n}" in modules:
                        yield name, f"{target}.{n}", [], id(node) in in_function
                        names = [m for m in names if m != n]
                if names:
                    yield name, target, names, id(node) in in_function


def report(root: Path) -> dict:
    package = root.name
    edges, private, local = {}, [], []
    for src, dst, names, in_function in imports(root):
        top = dst.split(".")[0]
        if in_function and top not in OPTIONAL:
            local.append((src, dst))
        if top != package:
            continue
        edges.setdefault(src, set()).add(dst)
        private += [(src, dst, n) for n in names if n.startswith("_") and not n.startswith("__")
                    and not src.startswith(dst) and not dst.startswith(src)]
    return {"cycles": _cycles(edges), "private": private, "in_function": local}


def _cycles(edges: dict) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v), on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "mpgrad")
    r = report(root.resolve())
    print(f"cycles: {len(r['cycles'])}  {r['cycles']}")
    print(f"private cross-imports: {len(r['private'])}  {r['private']}")
    print(f"in-function imports: {len(r['in_function'])}  {r['in_function']}")
