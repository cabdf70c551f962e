"""The dependency rules of docs/ARCHITECTURE.md, checked on the import graph of app.py, core/ and ui/.

- core/ never imports gradio, nor the command line (core.cli); only core/cli/ and core/__main__.py may;
- ui/ and app.py never import core.cli;
- no import cycles among the project's modules;
- no module imports another module's private names (a leading underscore);
- a UI panel imports no other panel: what panels share lives in ui/common.py (or in core). The one
  exception is the Merge form (ui.merge.form, ui.merge.recipe_form), which the Sweep tab, the
  demo strip and weights-from-data fill in.

The graph is read with ast, not by importing: every `import` and `from … import` anywhere in a
file counts (a function-level import is still a dependency, it only hides it). `from pkg import x`
is an edge to the submodule pkg.x when that file exists, else to pkg. Importing a submodule also
runs its package's __init__.py; that implicit edge is not counted (a registry package imports its
families, which import the registry module, not the package). The self-tests below build small
fake trees so the checker is seen failing.
"""
from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import core.demo.build
from core.app.models import find_models
from core.app.workspace import Workspace
from core.demo.build import demo_pair
from tests.test_demo_panel import fake_demo_models

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("app.py", "core", "ui")


def module_name(path: Path, root: Path) -> str:
    """core/merge/engine.py -> 'core.merge.engine'; core/merge/__init__.py -> 'core.merge'."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files(root: Path) -> dict[str, Path]:
    """Every project module by dotted name."""
    files = [root / "app.py"] if (root / "app.py").exists() else []
    files += [p for top in PROJECT[1:] if (root / top).is_dir() for p in sorted((root / top).rglob("*.py"))]
    return {module_name(p, root): p for p in files}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, str]]:
    """(imported module, imported name or '') for every import statement in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # from . import x / from ..y import z
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([source] if source else []))
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule, "") if submodule in known else (source, alias.name))
    return found


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, str]]]]:
    """(project module -> every module it imports, project or not; module -> its raw (module, name) imports)."""
    files = project_files(root)
    raw = {name: imports(name, path, set(files)) for name, path in files.items()}
    return {name: {module for module, _ in found} for name, found in raw.items()}, raw


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden_edges(graph: dict[str, set[str]]) -> list[str]:
    """'importer -> imported (rule)' for every edge the layout forbids."""
    bad = []
    for importer, imported in sorted(graph.items()):
        cli_side = within(importer, "core.cli") or importer == "core.__main__"
        for target in sorted(imported):
            if within(importer, "core") and not cli_side and within(target, "gradio"):
                bad.append(f"{importer} -> {target} (core never imports gradio: the UI drives core)")
            if within(target, "core.cli") and not cli_side:
                bad.append(f"{importer} -> {target} (only core/cli/ and core/__main__.py import the command line)")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One closed chain [a, b, …, a] per strongly connected group of project modules (Tarjan)."""
    edges = {node: sorted(t for t in targets if t in graph and t != node) for node, targets in graph.items()}
    edges = {node: targets + ([node] if node in graph[node] else []) for node, targets in edges.items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1 or node in graph[node]:
                groups.append(set(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_chain(sorted(group)[0], group, edges) for group in groups]


def _chain(start: str, group: set[str], edges: dict[str, list[str]]) -> list[str]:
    """A shortest path start -> … -> start inside one strongly connected group (breadth first)."""
    previous, frontier = {}, [start]
    while frontier:
        following = []
        for node in frontier:
            for target in edges[node]:
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target in group and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in a cycle group but no path leads back to it")


def private_imports(raw: dict[str, list[tuple[str, str]]], graph: dict[str, set[str]]) -> list[str]:
    """'importer imports _name from module' where a project module reaches into another one's internals."""
    return [f"{importer} imports {name} from {module}" for importer, found in sorted(raw.items())
            for module, name in found if name.startswith("_") and not name.startswith("__")
            and module in graph and module != importer]


PANELS = ("ui.merge", "ui.sweep", "ui.playground", "ui.generation", "ui.demo_panel", "ui.methods_panel", "ui.gauge")
SHARED_FORM = ("ui.merge.form", "ui.merge.recipe_form")  # what other panels may fill in


def panel_of(module: str) -> str | None:
    return next((panel for panel in PANELS if within(module, panel)), None)


def cross_panel_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) where one panel's module imports another panel's, the shared form aside."""
    return [(importer, target) for importer, imported in sorted(graph.items()) for target in sorted(imported)
            if panel_of(importer) and panel_of(target) not in (None, panel_of(importer)) and target not in SHARED_FORM]


# --- the project's own graph ---

GRAPH, RAW = import_graph(ROOT)


def test_the_graph_covers_the_project():
    assert {"app", "core", "core.merge.engine", "core.cli.main", "ui.common"} <= set(GRAPH)
    assert "core.merge.recipe" in GRAPH["core.cli.commands"]  # a function-level import is seen
    assert "gradio" in GRAPH["app"]


def test_core_imports_neither_gradio_nor_the_cli_and_ui_not_the_cli():
    bad = forbidden_edges(GRAPH)
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, "import cycles (move the shared piece to the module it belongs to):\n" + "\n".join(
        " -> ".join(chain) for chain in found)


def test_no_module_imports_another_ones_private_names():
    bad = private_imports(RAW, GRAPH)
    assert not bad, "private names used across modules (make them public or move them):\n" + "\n".join(bad)


def test_core_finds_the_demo_pair_from_folders_not_from_picker_labels(tmp_path, monkeypatch):
    ws = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs")
    fake_demo_models(ws.models_dir)
    pair = demo_pair(ws)
    assert pair is not None and [Path(ref).name for ref in pair] == ["general-ce", "cooking-ce"]
    relabelled = [replace(choice, label=f"★ {choice.label} ★") for choice in find_models(ws)]
    monkeypatch.setattr(core.demo.build, "find_models", lambda ws: relabelled)
    assert demo_pair(ws) == pair  # the picker may word its labels as it likes


def test_panels_share_through_ui_common_not_through_each_other():
    found = cross_panel_imports(GRAPH)
    bad = [f"{a} -> {b}" for a, b in found]
    assert not bad, "a panel imports another panel (move the shared piece to ui/common.py or core):\n" + "\n".join(bad)


# --- the checker itself, on fake trees ---

def _tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    return root


def test_checker_sees_a_cycle_hidden_in_a_function_and_a_relative_import(tmp_path):
    root = _tree(tmp_path, {
        "core/__init__.py": "", "core/a/__init__.py": "",
        "core/a/one.py": "def f():\n    from core.a import two\n",
        "core/a/two.py": "from .three import g\n",
        "core/a/three.py": "import core.a.one\n",
        "core/a/free.py": "from core.a import two\n",
    })
    graph, _ = import_graph(root)
    assert graph["core.a.two"] == {"core.a.three"}
    assert cycles(graph) == [["core.a.one", "core.a.two", "core.a.three", "core.a.one"]]


def test_checker_sees_a_module_importing_itself(tmp_path):
    graph, _ = import_graph(_tree(tmp_path, {"ui/__init__.py": "", "ui/p.py": "import ui.p\n"}))
    assert cycles(graph) == [["ui.p", "ui.p"]]


def test_checker_refuses_gradio_in_core_and_the_cli_outside_it(tmp_path):
    root = _tree(tmp_path, {
        "app.py": "import gradio as gr\nfrom core.cli.main import main\n",
        "core/__init__.py": "", "core/__main__.py": "from core.cli.main import main\n",
        "core/cli/__init__.py": "", "core/cli/main.py": "import gradio\n",
        "core/x.py": "def f():\n    from gradio.themes import Soft\n",
        "core/y.py": "from core import cli\n",
        "ui/__init__.py": "", "ui/p.py": "import core.cli.main\n",
    })
    assert forbidden_edges(import_graph(root)[0]) == [
        "app -> core.cli.main (only core/cli/ and core/__main__.py import the command line)",
        "core.x -> gradio.themes (core never imports gradio: the UI drives core)",
        "core.y -> core.cli (only core/cli/ and core/__main__.py import the command line)",
        "ui.p -> core.cli.main (only core/cli/ and core/__main__.py import the command line)",
    ]


def test_checker_sees_private_names_taken_from_another_module(tmp_path):
    root = _tree(tmp_path, {
        "ui/__init__.py": "", "ui/a.py": "_SECRET = 1\n__all__ = []\n",
        "ui/b.py": "from ui.a import _SECRET, __all__\nfrom os import _exit\n",
    })
    graph, raw = import_graph(root)
    assert private_imports(raw, graph) == ["ui.b imports _SECRET from ui.a"]


def test_checker_sees_one_panel_importing_another(tmp_path):
    root = _tree(tmp_path, {
        "ui/__init__.py": "", "ui/common.py": "", "ui/playground.py": "from ui.common import QUEUE\n",
        "ui/merge/__init__.py": "", "ui/merge/form.py": "", "ui/merge/panel.py": "from ui.merge.form import X\n",
        "ui/sweep/__init__.py": "",
        "ui/sweep/panel.py": "from ui.merge import form\nfrom ui.playground import default_pair\nimport ui.merge.panel\n",
    })
    assert cross_panel_imports(import_graph(root)[0]) == [("ui.sweep.panel", "ui.merge.panel"),
                                                         ("ui.sweep.panel", "ui.playground")]
