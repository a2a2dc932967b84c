"""The packages' import graph, read with ``ast`` from every import statement (those inside
functions too: a lazy import is a dependency all the same): no cycles. Imports under
``if TYPE_CHECKING:`` are left out: they never run, they only name types for a checker."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("mslc", "pipeline", "tune")


def module_files() -> dict[str, Path]:
    """``dotted module name → file`` for every module of :data:`PACKAGES`."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules one import statement loads (``from P import name`` counts as
    the module ``P.name`` where that is one, else as ``P``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name and name not in known:  # `import a.b.c` where a.b.c is an attribute
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    graph = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps = set()
        for node in runtime_nodes(tree):
            deps.update(imported(node, mod, path.name == "__init__.py", known))
        graph[mod] = deps - {mod}
    return graph


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_and_from_imports_resolve_to_modules():
    known = {"p", "p.q", "p.q.r", "p.s"}
    stmt = ast.parse("from . import r\nfrom ..s import x\nimport p.q.r.attr\nfrom p import s, thing").body
    assert imported(stmt[0], "p.q", True, known) == ["p.q.r"]
    assert imported(stmt[1], "p.q.r", False, known) == ["p.s"]
    assert imported(stmt[2], "p.s", False, known) == ["p.q.r"]
    assert imported(stmt[3], "p.q", True, known) == ["p.s", "p"]


def test_type_checking_imports_are_not_edges():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.q\nelse:\n    import p.s\n"
        "def f():\n    import p\n"
    )
    names = [n.names[0].name for n in runtime_nodes(tree) if isinstance(n, ast.Import)]
    assert names == ["p.s", "p"]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 20 and "pipeline.train" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


SHARED = (
    "pipeline.errors",
    "pipeline.storage",
    "pipeline.shardset",
    "pipeline.shardset.manifest",
    "pipeline.shardset.spec",
    "pipeline.shardset.tar",
    "pipeline.shardset.samples",
    "pipeline.rundir",
)


def test_preparation_and_training_meet_only_in_the_shard_format():
    """Offline preparation never imports the training runtime; the shared modules (errors,
    storage, the shard-directory contract) import neither side. Training may call
    preparation (``train.py`` writes missing shards); the entry points may use both."""
    graph = import_graph()
    prep = {m for m in graph if m.startswith("pipeline.prep.")} | {"pipeline.prep"}
    training = {m for m in graph if m.startswith("pipeline.training.")} | {"pipeline.training"}
    assert prep and training
    for m in prep:
        assert not graph[m] & training, f"{m} imports the training runtime: {sorted(graph[m] & training)}"
        assert graph[m] <= prep | set(SHARED) | {d for d in graph[m] if d.startswith("mslc")}, m
    for m in SHARED:
        assert not graph[m] & (prep | training), f"{m} is shared but imports {sorted(graph[m] & (prep | training))}"
    assert not any(d.startswith("pipeline.training") for m in graph if m.startswith("mslc") for d in graph[m])


def _package(graph: dict[str, set[str]], name: str) -> set[str]:
    return {m for m in graph if m == name or m.startswith(name + ".")}


def test_training_and_review_do_not_import_each_other():
    """Both read shards through the shard contract and runs through the run-directory
    contract; :mod:`pipeline.worker` (above both) puts them together."""
    graph = import_graph()
    training, review = _package(graph, "pipeline.training"), _package(graph, "pipeline.review")
    for a, b in ((training, review), (review, training)):
        for m in a:
            assert not graph[m] & b, f"{m} imports {sorted(graph[m] & b)}"
    assert not any(graph[m] & _package(graph, "pipeline.prep") for m in training), "training imports prep"


ROOMS = ("settings", "data", "methods", "run")  # pipeline/training/'s rooms, lowest first


def test_the_training_rooms_import_only_downwards():
    """settings ← data ← methods ← run: a room imports only rooms below it."""
    graph = import_graph()
    room = {m: r for r in ROOMS for m in _package(graph, f"pipeline.training.{r}")}
    assert set(room.values()) == set(ROOMS)
    for m, r in room.items():
        for d in graph[m]:
            if d in room:
                assert ROOMS.index(room[d]) <= ROOMS.index(r), f"{m} ({r}) imports {d} ({room[d]})"


def test_the_shard_and_run_directory_contracts_import_no_runtime():
    graph = import_graph()
    for m in SHARED:
        assert all(d in SHARED or d.startswith("mslc") for d in graph[m]), (m, graph[m])
