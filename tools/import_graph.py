"""Import graph of nativevl's modules, read from the source with `ast`: circles and arrows that point up.

    python tools/import_graph.py            # prints every room's arrows, then the problems; exit 1 if any
    python tools/import_graph.py --modules  # the module-level graph too

Rooms are ranked bottom to top (`RANKS`); a module may import its own room and the rooms below it. Imports
inside functions count too: a lazy import is still a dependency, it only hides the circle from Python.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. Rooms on one line share a rank and must not import each other.
RANKS: list[tuple[str, ...]] = [
    ("config", "device", "tokenizer"),
    ("conversation",),
    ("kernels",),
    ("data",),
    ("model",),
    ("weights",),
    ("infer",),
    ("api",),  # nativevl.InternVL (api.py) and the package's __init__: the model + weights + chat, for users
    ("train", "eval"),
    ("serve", "ablate"),
    ("demo",),
    ("cli",),
    ("__main__",),
]


def room_of(module: str) -> str:
    """`nativevl.model.text` -> `model`; `nativevl` (the package's __init__) -> `api`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The nativevl modules `path` imports (resolved to modules that exist; `from x import name` counts x.name
    when that is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.startswith("nativevl") and name != module:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (SRC / "nativevl").rglob("*.py")}
    known = set(paths)
    return {m: imports_of(p, m, known) for m, p in sorted(paths.items())}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="print the module-level graph too")
    args = parser.parse_args()
    sys.setrecursionlimit(10_000)
    edges = graph()
    rank = {room: i for i, rooms in enumerate(RANKS) for room in rooms}
    room_edges: dict[str, set[str]] = {}
    for m, targets in edges.items():
        for t in targets:
            if room_of(m) != room_of(t):
                room_edges.setdefault(room_of(m), set()).add(room_of(t))
    problems: list[str] = []
    for room in sorted(rank, key=lambda r: (rank[r], r)):
        below = sorted(room_edges.get(room, ()), key=lambda r: (rank.get(r, -1), r))
        print(f"{room:13} -> {', '.join(below) or '-'}")
    for m, targets in edges.items():
        for t in sorted(targets):
            a, b = room_of(m), room_of(t)
            if a not in rank or b not in rank:
                problems.append(f"unranked room: {m} -> {t}")
            elif a != b and rank[b] >= rank[a]:
                problems.append(f"arrow up or sideways: {m} ({a}) -> {t} ({b})")
    for component in cycles(edges):
        problems.append("import circle: " + " <-> ".join(component))
    if args.modules:
        for m, targets in edges.items():
            print(f"  {m} -> {', '.join(sorted(targets)) or '-'}")
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports: "
          + (f"{len(problems)} problems" if problems else "no circle, no arrow up"))
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
