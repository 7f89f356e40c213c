"""The package's import graph keeps its shape: no cycles, each layer imports only layers below it, and
evaluation is reached from outside only by the commands that run it. Read from the source (every
`import` statement, also those inside functions), so a lazy import cannot hide an edge."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "mpcc"

# Lowest first; a module may import its own layer's modules and any below. A folder stands for its package.
LAYERS = (
    ("mpcc", "mpcc.errors", "mpcc.text", "mpcc.seeds"),
    ("mpcc.inputs", "mpcc.options", "mpcc.demo_config"),  # the demo's options: its --help stays light
    ("mpcc.files", "mpcc.recipes", "mpcc.rewards"),
    ("mpcc.records",),  # written atomically; the output checks name outputs by their records
    ("mpcc.outputs",),
    ("mpcc.data",),
    ("mpcc.families",),  # what mpcc knows of each model family, below everything that loads a model
    ("mpcc.models",),
    ("mpcc.generation", "mpcc.reports"),
    ("mpcc.training", "mpcc.evaluation", "mpcc.annotation"),
    ("mpcc.launch", "mpcc.export", "mpcc.bench", "mpcc.train"),
    ("mpcc.demo",),
    ("mpcc.study",),  # reuses the demo's stages
    ("mpcc.cli", "mpcc.__main__"),
)
SIBLINGS_APART = ("mpcc.training", "mpcc.evaluation", "mpcc.annotation")  # one layer, no edges between
EVALUATION_USERS = {"mpcc.cli", "mpcc.demo", "mpcc.train", "mpcc.export"}  # the commands that run an eval
EVALUATION_USERS |= {"mpcc.study.runs", "mpcc.study.outputs", "mpcc.study.report"}  # `mpcc study`


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "mpcc" or name.startswith("mpcc.")}


def _graph() -> nx.DiGraph:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target in _imports(path):
            while target not in modules:  # `from mpcc.data import prompts` names a module, a class does not
                target = target.rpartition(".")[0]
            if target != name:
                graph.add_edge(name, target)
    return graph


def _unit(module: str) -> str:
    """The LAYERS entry holding `module`: the longest one it is or lies under."""
    entries = [e for layer in LAYERS for e in layer if module == e or module.startswith(e + ".")]
    assert entries, f"{module} is in no layer: add it to LAYERS"
    return max(entries, key=len)


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, f"import cycles: {cycles}"


def _upward(graph: nx.DiGraph) -> list[str]:
    """Edges to a higher layer, or between the siblings that must stay apart."""
    edges = []
    for source, target in graph.edges:
        a, b = _unit(source), _unit(target)
        across = a != b and a in SIBLINGS_APART and b in SIBLINGS_APART
        if _layer(b) > _layer(a) or across:
            edges.append(f"{source} -> {target}")
    return sorted(edges)


def test_layers_import_only_downwards():
    upward = _upward(_graph())
    assert not upward, "imports that run up or across: " + ", ".join(upward)


def test_evaluation_is_used_only_by_the_commands_that_evaluate():
    outside = sorted(
        f"{s} -> {t}"
        for s, t in _graph().edges
        if t.startswith("mpcc.evaluation")
        and not s.startswith("mpcc.evaluation")
        and s not in EVALUATION_USERS
    )
    assert not outside, f"modules outside evaluation importing it: {outside}"


def test_the_rules_see_planted_violations():
    """The checks are not vacuous: data importing training runs up, training importing annotation
    runs across."""
    graph = _graph()
    graph.add_edge("mpcc.data.build", "mpcc.training.config")
    graph.add_edge("mpcc.training.data", "mpcc.annotation.verify")
    upward = _upward(graph)
    assert "mpcc.data.build -> mpcc.training.config" in upward
    assert "mpcc.training.data -> mpcc.annotation.verify" in upward
