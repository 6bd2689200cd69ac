"""The house's shape, read from the source: the import graph has no cycle, Dagster stays in its
rooms, domain rooms import nothing above them, the production code never imports its test
double, and no module grows past 500 lines. Pure AST reading, nothing is imported (~1 s).

Every import statement counts, at module level and inside functions alike (a lazy import does
not hide a cycle); only `if TYPE_CHECKING:` blocks are skipped, since they never run."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "assets", "sensors", "warehouse")
MAX_LINES = 500

# Where Dagster may be imported.
DAGSTER_ROOMS = ("assets", "sensors", "pipeline.orchestration")
# Rooms of plain domain code, and what they must never import (it sits above them).
DOMAIN = (
    "pipeline.candles",
    "pipeline.indicators",
    "pipeline.strategy",
    "pipeline.backtest",
    "pipeline.quality",
    "pipeline.exchanges",
    "pipeline.sidecar",
    "pipeline.fastlane",
    "pipeline.orderflow",
    "pipeline.bots",
    "warehouse",
    "pipeline.config",
    "pipeline.instance_storage",
    "pipeline.yamlfile",
    "pipeline.jsonfile",
)
ABOVE_DOMAIN = ("pipeline.runtime", "pipeline.orchestration", "assets", "sensors")
# The replay exchange is a test and demo double: only these may import it (tests/ and bench/
# are not walked here).
REPLAY = "pipeline.replay"
REPLAY_USERS = ("pipeline.runtime", "pipeline.replay")


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules(root: Path) -> dict[str, Path]:
    """Every module of our packages under `root`, by dotted name."""
    return {
        module_name(p, root): p
        for pkg in PACKAGES
        if (root / pkg).is_dir()
        for p in sorted((root / pkg).rglob("*.py"))
    }


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(importer: str, path: Path, known: Iterable[str]) -> Iterable[tuple[str, int]]:
    """(dotted name, line) of everything `path` imports, wherever the statement stands.
    `from a import b` names the module `a.b` when `known` has it, else `a` (b is a name in a)."""
    known = set(known)
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):  # type-only imports count too: a circle is a circle
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, path.name == "__init__.py", node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno


def graph(modules: dict[str, Path]) -> tuple[list[Edge], list[Edge]]:
    """(edges between our modules, every import as an edge to whatever it names)."""
    ours, every = [], []
    for name, path in modules.items():
        for target, line in dict.fromkeys(imports(name, path, modules)):
            every.append(Edge(name, target, line))
            if target in modules and target != name:
                ours.append(Edge(name, target, line))
    return ours, every


def within(name: str, rooms: tuple[str, ...] | list[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in rooms)


def cycles(edges: list[Edge]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected component of 2+ modules."""
    succ: dict[str, list[str]] = {}
    for e in edges:
        succ.setdefault(e.importer, []).append(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph is a few hundred nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ.get(v, []):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(succ):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(min(c), c, succ) for c in comps]


def _cycle_in(start: str, comp: set[str], succ: dict[str, list[str]]) -> list[str]:
    """A shortest path from `start` back to itself inside `comp` (breadth first)."""
    prev: dict[str, str] = {}
    todo = [start]
    while todo:
        nxt = []
        for v in todo:
            for w in succ.get(v, []):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w in comp and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        todo = nxt
    raise AssertionError(f"{start} is in a cycle but none was found")


def violations(modules: dict[str, Path]) -> dict[tuple[str, ...], str]:
    """Every broken room rule: (rule, importer, imported) -> where, as `path:line`."""
    ours, every = graph(modules)
    found: dict[tuple[str, ...], str] = {}

    def where(e: Edge) -> str:
        return f"{modules[e.importer].name}:{e.line} ({e.importer})"

    for e in every:
        top = e.imported.split(".")[0]
        if (top == "dagster" or top.startswith("dagster_")) and not within(
            e.importer, DAGSTER_ROOMS
        ):
            found.setdefault(("dagster", e.importer, top), where(e))
    for e in ours:
        if within(e.importer, DOMAIN) and within(e.imported, ABOVE_DOMAIN):
            found.setdefault(("domain", e.importer, e.imported), where(e))
        if within(e.imported, [REPLAY]) and not within(e.importer, REPLAY_USERS):
            found.setdefault(("replay", e.importer, e.imported), where(e))
    return found


def test_no_import_cycles() -> None:
    ours, _ = graph(source_modules(ROOT))
    lines = [f"import cycle: {' -> '.join(c)} (move the shared piece down)" for c in cycles(ours)]
    assert not lines, "\n".join(lines)


RULES = {
    "dagster": f"Dagster imported outside {', '.join(DAGSTER_ROOMS)}",
    "domain": f"a domain room imports {', '.join(ABOVE_DOMAIN)}, which sit above it",
    "replay": f"the test double {REPLAY} imported outside {', '.join(REPLAY_USERS)}",
}


def test_rooms_import_only_what_they_may() -> None:
    found = violations(source_modules(ROOT))
    lines = [f"{found[v]} imports {v[2]}: {RULES[v[0]]}" for v in sorted(found)]
    assert not lines, "\n".join(lines)


def test_no_module_over_500_lines() -> None:
    tops = [p for p in ROOT.iterdir() if not p.name.startswith(".")]
    files = [p for p in tops if p.suffix == ".py"] + [
        f for d in tops if d.is_dir() and d.name not in ("tests", "bench") for f in d.rglob("*.py")
    ]
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in files}
    large = {f for f, n in sizes.items() if n > MAX_LINES}
    lines = [f"{f}: {sizes[f]} lines: split it by what it holds" for f in sorted(large)]
    assert not lines, "\n".join(lines)


# -- the checks themselves catch what they are for -------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return source_modules(tmp_path)


def test_a_planted_cycle_is_found_with_its_path(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "pipeline/__init__.py": "",
            "pipeline/strategy/__init__.py": "",
            "pipeline/strategy/a.py": "from pipeline.strategy import b\n",
            "pipeline/strategy/b.py": "def f():\n    from . import c\n",  # function level
            "pipeline/strategy/c.py": "import pipeline.strategy.a\n",
            "pipeline/strategy/d.py": "import pipeline.strategy.a, pipeline.strategy.e\n",
            # type-only imports count too: d <-> e is a circle the reader has to untangle
            "pipeline/strategy/e.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    import pipeline.strategy.d\n",
        },
    )
    ours, _ = graph(modules)
    assert sorted(cycles(ours)) == [
        [
            "pipeline.strategy.a",
            "pipeline.strategy.b",
            "pipeline.strategy.c",
            "pipeline.strategy.a",
        ],
        ["pipeline.strategy.d", "pipeline.strategy.e", "pipeline.strategy.d"],
    ]


def test_planted_room_violations_are_found(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "pipeline/__init__.py": "",
            "pipeline/candles/__init__.py": "",
            "pipeline/candles/x.py": "def f():\n    import dagster\n"
            "    from pipeline.runtime import cli\n",
            "pipeline/runtime/__init__.py": "",
            "pipeline/runtime/cli.py": "from pipeline.replay import clock\n",  # allowed
            "pipeline/replay/__init__.py": "",
            "pipeline/replay/clock.py": "",
            "pipeline/exchanges/__init__.py": "",
            "pipeline/exchanges/bybit.py": "from pipeline.replay.clock import x\n",
            "assets/__init__.py": "import dagster as dg\n",  # allowed
        },
    )
    assert set(violations(modules)) == {
        ("dagster", "pipeline.candles.x", "dagster"),
        ("domain", "pipeline.candles.x", "pipeline.runtime.cli"),
        ("replay", "pipeline.exchanges.bybit", "pipeline.replay.clock"),
    }


@pytest.mark.parametrize("level,module,expect", [(1, "b", "p.q.b"), (2, None, "p"), (0, "x", "x")])
def test_relative_imports_resolve(level: int, module: str | None, expect: str) -> None:
    node = ast.ImportFrom(module=module, names=[], level=level)
    assert _resolve("p.q.a", False, node) == expect
