"""The package's layering, enforced: every ``import`` in pplvm (at module level or inside a
function, relative or absolute) points at its own layer or a lower one.

Low to high, as README's "The house" draws it::

    errors, _registry, _progress, _signals, _targets, schema
                                        foundation: errors, the registry type, progress, import paths, Section
    training.checkpoint, training.distributed, evaluation.arviz, evaluation.plots, evaluation.graph
                                        atomic files, collectives, the arviz converter, figures, graphs
    distributions, data, decoders, inference, guides.forward, evaluation.two_sample
                                        building blocks and the importance-sampling estimator
    families, guides.base, objectives.base
                                        the contract and the families; the guide and objective plugin bases
    config                              the card schema, gathered from the registries
    guides, objectives, training.rules, training.compiled
                                        inference over a family: guides, objectives, update rules
    training, evaluation, rundir        the loop; latent-space tools; run directories (lock, atomic files)
    run                                 the facade
    workflows                           over runs: compare, SBC
    cli, pplvm/__init__                 the public surface
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pplvm

PACKAGE = Path(pplvm.__file__).parent

#: lowest first; a module belongs to the layer of its longest listed prefix
LAYERS: list[list[str]] = [
    ["pplvm.errors", "pplvm._registry", "pplvm._progress", "pplvm._signals", "pplvm._targets", "pplvm.schema"],
    [
        "pplvm.training.checkpoint",
        "pplvm.training.distributed",
        "pplvm.evaluation.arviz",
        "pplvm.evaluation.plots",
        "pplvm.evaluation.graph",
    ],
    # guides.forward (diffusion's fixed noising chain) and evaluation.two_sample (statistics a
    # GAN objective monitors) use only data and distributions: building blocks, below their folders
    [
        "pplvm.distributions",
        "pplvm.data",
        "pplvm.decoders",
        "pplvm.inference",
        "pplvm.guides.forward",
        "pplvm.evaluation.two_sample",
    ],
    ["pplvm.families", "pplvm.guides.base", "pplvm.objectives.base"],
    ["pplvm.config"],
    ["pplvm.guides", "pplvm.objectives", "pplvm.training.rules", "pplvm.training.compiled"],
    ["pplvm.training", "pplvm.evaluation", "pplvm.rundir"],
    ["pplvm.run"],
    ["pplvm.workflows"],
    ["pplvm.cli", "pplvm"],
]


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``module``'s longest matching prefix."""
    best, length = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = i, len(p)
    if best is None:
        raise KeyError(module)
    return best


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, module)`` for every pplvm module ``source`` imports; ``from pkg import name``
    counts as ``pkg.name`` where ``name`` is a submodule."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
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


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        own = layer_of(module)
        for line, target in imported_modules(path.read_text(), module, path.name == "__init__.py", root):
            if layer_of(target) > own:
                found.append(
                    f"{path.relative_to(root.parent)}:{line}: {module} (layer {own}) imports "
                    f"{target} (layer {layer_of(target)})"
                )
    return found


def test_every_module_has_a_layer():
    """A new top-level module or package must be placed in :data:`LAYERS`."""
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))  # raises KeyError for an unplaced module


def test_no_module_imports_a_higher_layer():
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself: a family that imports the facade, or the card schema, is caught,
    lazily inside a function or not; an import from its own layer or below is not."""
    pkg = tmp_path / "pplvm"
    (pkg / "families").mkdir(parents=True)
    for f in ["__init__.py", "run.py", "config.py", "schema.py", "families/__init__.py"]:
        (pkg / f).write_text("")
    (pkg / "families" / "mine.py").write_text(
        "from ..schema import Section\n"
        "from . import base\n"
        "def f():\n    from ..run import Run\n"
        "from pplvm.config import card_schema\n"
    )
    (pkg / "families" / "base.py").write_text("from pplvm import schema\n")
    found = violations(pkg)
    assert len(found) == 2
    assert "mine.py:4: pplvm.families.mine (layer 3) imports pplvm.run (layer 7)" in found[0]
    assert "mine.py:5:" in found[1] and "imports pplvm.config (layer 4)" in found[1]


@pytest.mark.parametrize(
    "module, layer",
    [
        ("pplvm.evaluation.latent", 6),
        ("pplvm.evaluation.plots", 1),
        ("pplvm.workflows.sbc", 8),
        ("pplvm.inference.importance", 2),
    ],
)
def test_longest_prefix_decides(module, layer):
    assert layer_of(module) == layer
