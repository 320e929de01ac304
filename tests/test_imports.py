"""The import graph of the project's packages, read from the source with `ast` (imports
inside functions count too): no cycles; the config schema and the algorithm math import
nothing of the engine; siirl_core imports nothing of the flows, tasks, Prefect or Dask."""
import ast
import os

from tests.conftest import ROOT

PACKAGES = ("siirl_core", "flows", "tasks", "infra")


def _modules() -> dict[str, str]:
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[module.removesuffix(".__init__")] = path
    return out


def _imported_names(path: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> project modules it imports, module -> every top-level name it imports)."""
    modules = _modules()

    def project_module(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    edges, raw = {}, {}
    for module, path in modules.items():
        raw[module] = _imported_names(path)
        targets = {project_module(n) for n in raw[module]}
        # A package's __init__ is run before its submodules: importing one's own package is no edge.
        edges[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return edges, raw


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()[0]) == []


def test_layers():
    edges, raw = _graph()
    assert edges["siirl_core.config"] == set()
    for module in edges:
        if module.startswith("siirl_core.algorithms"):
            assert all(t.startswith("siirl_core.algorithms") for t in edges[module]), (module, edges[module])
        if module.startswith("siirl_core"):
            above = {t for t in edges[module] if not t.startswith("siirl_core")}
            outside = {n for n in raw[module] if n.split(".")[0] in ("prefect", "dask", "distributed")}
            assert not above and not outside, (module, above, outside)


def test_rules_live_beside_their_owners():
    """The checks module knows the schema and the registries of names, not the engine
    parts: their rules register themselves (siirl_core.config_rules)."""
    from siirl_core.compose import compose_config
    from siirl_core.config_rules import OWNERS, registered_rules

    edges, _ = _graph()
    engine = ("siirl_core.data", "siirl_core.rewards", "siirl_core.pipeline", "siirl_core.training",
              "siirl_core.agents", "siirl_core.tracking", "siirl_core.wandb_tracking")
    assert not {t for t in edges["siirl_core.config_checks"] if t.startswith(engine)}
    assert edges["siirl_core.config_rules"] == {"siirl_core.config"}
    compose_config([])
    assert set(registered_rules()) == {"trainer.fused_update", "task", "reward", "algorithm.pipeline", "agents",
                                       "tracking.mlflow", "tracking.wandb"}
    assert all(owner.startswith(engine) for owner in OWNERS)
