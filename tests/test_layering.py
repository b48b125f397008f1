"""The package's layering, enforced: the folders are layers.

Every ``import`` in pplvm — at module level or inside a function (or under ``TYPE_CHECKING``),
relative or absolute — points at its own folder or at a folder in a lower layer. A folder is a
sub-package (``pplvm.families``) or a top-level module (``pplvm.config``); each sits in exactly
one layer, whole: no module of a folder is placed apart from it. This table is the one place
the order is written down (docs/guide/house.md lists the folders in the same order).

Low to high::

    errors, schema, _registry, _targets, _progress, _signals, _pyro_settings, _modes, rundir, sections
                        foundation: errors, Section, the registry type, import paths, progress,
                        signals, Pyro's settings, networks' train / eval mode, run directories
                        and the one atomic writer, the fixed card sections ([training], [evaluation])
    distributions, data, decoders, inference, evaluation, tracking
                        building blocks: distributions, data, networks, the importance-sampling
                        estimator, evaluation's tools (memory bounds, figures, arviz, statistics),
                        the experiment trackers (TensorBoard, MLflow)
    families            the contract and the families
    training            the loop, the update-rule interface, devices, collectives, checkpoints
    guides, objectives  inference over a family: guides, and objectives that build update rules
    config              the card schema, gathered from the family, data, objective and guide registries
    run, facade         the facade: Run, and its parts (build, train, query, artifacts)
    workflows, sklearn  over runs: compare, SBC, latent-space tools; scikit-learn estimators
    cli, commands, __main__, pplvm (its __init__)
                        the public surface: the parser, its subcommands, the package

Checked at two levels:

- folders: every import between two folders goes to the same layer or a lower one, and the
  folders' import graph has no cycle (two folders of one layer do not import each other);
- modules: every import is reported where it stands (file and line) when it points upward,
  and no two modules import each other, directly or around a loop, lazily or not
  (an import under ``if TYPE_CHECKING:`` never runs: it counts for layers, not for cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pplvm

PACKAGE = Path(pplvm.__file__).parent

#: lowest first; each entry a folder: a sub-package or a top-level module of pplvm
LAYERS: list[list[str]] = [
    [
        "pplvm.errors",
        "pplvm.schema",
        "pplvm._registry",
        "pplvm._targets",
        "pplvm._progress",
        "pplvm._allocator",
        "pplvm._signals",
        "pplvm._pyro_settings",
        "pplvm._modes",
        "pplvm.rundir",
        "pplvm.sections",
    ],
    ["pplvm.distributions", "pplvm.data", "pplvm.decoders", "pplvm.inference", "pplvm.evaluation", "pplvm.tracking"],
    ["pplvm.families"],
    ["pplvm.training"],
    ["pplvm.guides", "pplvm.objectives"],
    ["pplvm.config"],
    ["pplvm.run", "pplvm.facade"],
    ["pplvm.workflows", "pplvm.sklearn"],
    ["pplvm.cli", "pplvm.commands", "pplvm.__main__", "pplvm"],
]


def folder_of(module: str) -> str:
    """The folder ``module`` belongs to: ``pplvm.families.gmm`` -> ``pplvm.families``."""
    return ".".join(module.split(".")[:2])


def layer_of(module: str, layers: list[list[str]] = LAYERS) -> int:
    """Index in ``layers`` of ``module``'s folder."""
    folder = folder_of(module)
    for i, folders in enumerate(layers):
        if folder in folders:
            return i
    raise KeyError(f"{module}: its folder {folder} has no layer in tests/test_layering.py")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_only(tree: ast.AST) -> set[int]:
    """``id`` of each import under ``if TYPE_CHECKING:`` (for annotations; never run)."""
    out = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def imported_modules(
    source: str, module: str, is_package: bool, root: Path = PACKAGE, *, runtime: bool = False
) -> list[tuple[int, str]]:
    """``(line, module)`` for every pplvm module ``source`` imports, at any depth (inside
    functions, classes, ``if`` blocks); ``from pkg import name`` counts as ``pkg.name`` where
    ``name`` is a submodule. ``runtime``: leave out imports under ``if TYPE_CHECKING:``."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    tree = ast.parse(source)
    skip = type_checking_only(tree) if runtime else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pplvm"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pplvm":
                continue
            for a in node.names:
                sub = root.parent.joinpath(*f"{target}.{a.name}".split("."))
                is_sub = sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()
                out.append((node.lineno, f"{target}.{a.name}" if is_sub else target))
    return sorted(out)


def import_graph(root: Path = PACKAGE, *, runtime: bool = False) -> dict[str, list[tuple[str, int, str]]]:
    """``module -> [(file, line, imported module), ...]`` over every module under ``root``
    (``runtime``: the imports that run, not those under ``if TYPE_CHECKING:``)."""
    graph = {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        rel = str(path.relative_to(root.parent))
        graph[module] = [
            (rel, line, target)
            for line, target in imported_modules(
                path.read_text(), module, path.name == "__init__.py", root, runtime=runtime
            )
            if target != module
        ]
    return graph


def violations(root: Path = PACKAGE, layers: list[list[str]] = LAYERS) -> list[str]:
    """Module level: each import that points at a higher layer, where it stands."""
    found = []
    for module, imports in import_graph(root).items():
        own = layer_of(module, layers)
        for rel, line, target in imports:
            if layer_of(target, layers) > own:
                found.append(
                    f"{rel}:{line}: {module} (layer {own}) imports {target} (layer {layer_of(target, layers)})"
                )
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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


def folder_edges(root: Path = PACKAGE, *, runtime: bool = False) -> dict[str, set[str]]:
    """``folder -> folders it imports`` (other than itself; ``runtime``: as in :func:`import_graph`)."""
    edges: dict[str, set[str]] = {}
    for module, imports in import_graph(root, runtime=runtime).items():
        for _, _, target in imports:
            if folder_of(target) != folder_of(module):
                edges.setdefault(folder_of(module), set()).add(folder_of(target))
    return edges


def folder_violations(root: Path = PACKAGE, layers: list[list[str]] = LAYERS) -> list[str]:
    """Folder level: each folder that imports a higher layer's folder, and each import cycle
    between folders."""
    edges = folder_edges(root)
    upward = [
        f"{a} (layer {layer_of(a, layers)}) imports {b} (layer {layer_of(b, layers)})"
        for a in sorted(edges)
        for b in sorted(edges[a])
        if layer_of(b, layers) > layer_of(a, layers)
    ]
    loops = cycles(folder_edges(root, runtime=True))  # a type hint under TYPE_CHECKING never runs
    return upward + [f"folders import each other: {' <-> '.join(c)}" for c in loops]


def module_cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Modules that import each other when they run (a type hint under ``TYPE_CHECKING`` of
    the class a private helper module serves is not a cycle: it never executes)."""
    graph = import_graph(root, runtime=True)
    return cycles({m: {t for _, _, t in imports if t in graph} for m, imports in graph.items()})


# ------------------------------------------------------------------ the package
def test_every_folder_has_one_layer():
    """A new folder (sub-package or top-level module) must be placed in :data:`LAYERS`, whole."""
    listed = [f for layer in LAYERS for f in layer]
    assert len(listed) == len(set(listed)), "a folder listed twice"
    assert all(f == "pplvm" or f.count(".") == 1 for f in listed), "only folders are placed, never one module apart"
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))  # raises KeyError for an unplaced folder


def test_no_folder_imports_a_higher_layer_or_another_that_imports_it():
    assert folder_violations() == []


def test_no_module_imports_a_higher_layer():
    assert violations() == []


def test_no_two_modules_import_each_other():
    assert module_cycles() == []


def test_every_import_names_a_module_that_exists():
    """A moved module leaves no import of its old place behind (a lazy one fails only when run)."""
    graph = import_graph()
    missing = [f"{rel}:{line}: {t}" for imports in graph.values() for rel, line, t in imports if t not in graph]
    assert missing == []


# ------------------------------------------------------------------ the checker
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "pplvm"
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def test_the_check_catches_an_upward_import(tmp_path):
    """A family that imports the facade, or the card schema, is caught, lazily inside a
    function or not, relative or absolute; an import from its own folder or below is not."""
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "",
            "run.py": "",
            "config.py": "",
            "schema.py": "",
            "families/__init__.py": "",
            "families/mine.py": "from ..schema import Section\n"
            "from . import base\n"
            "def f():\n    from ..run import Run\n"
            "from pplvm.config import card_schema\n",
            "families/base.py": "from pplvm import schema\n",
        },
    )
    found = violations(pkg)
    assert len(found) == 2
    assert "mine.py:4: pplvm.families.mine (layer 2) imports pplvm.run (layer 6)" in found[0]
    assert "mine.py:5:" in found[1] and "imports pplvm.config (layer 5)" in found[1]
    assert folder_violations(pkg) == [
        "pplvm.families (layer 2) imports pplvm.config (layer 5)",
        "pplvm.families (layer 2) imports pplvm.run (layer 6)",
    ]


def test_the_check_catches_folders_and_modules_that_import_each_other(tmp_path):
    """Within one layer: data and decoders may not import each other (even lazily), and two
    modules of one folder may not either."""
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "",
            "data/__init__.py": "def f():\n    from ..decoders import mlp\n",
            "decoders/__init__.py": "",
            "decoders/mlp.py": "import pplvm.data\n",
            "families/__init__.py": "",
            "families/a.py": "from .b import x\n",
            "families/b.py": "if False:\n    from . import a\n",
        },
    )
    assert violations(pkg) == []  # every import stays within its layer
    assert folder_violations(pkg) == ["folders import each other: pplvm.data <-> pplvm.decoders"]
    assert module_cycles(pkg) == [
        ["pplvm.data", "pplvm.decoders.mlp"],
        ["pplvm.families.a", "pplvm.families.b"],
    ]


@pytest.mark.parametrize(
    "module, layer",
    [
        ("pplvm.rundir", 0),
        ("pplvm.evaluation.plots", 1),
        ("pplvm.evaluation.two_sample", 1),
        ("pplvm.inference.importance", 1),
        ("pplvm.training.checkpoint", 3),
        ("pplvm.training.rules", 3),
        ("pplvm.objectives.em", 4),
        ("pplvm.workflows.latent", 7),
    ],
)
def test_a_module_is_in_its_folders_layer(module, layer):
    assert layer_of(module) == layer
