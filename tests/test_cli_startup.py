"""The command line answers without torch: ``--version``, ``--help``, every subcommand's
``--help`` and the errors a card's file or the arguments can show import neither torch nor Pyro
(``python -X importtime`` in a fresh process says what was imported). What the lazy package
must keep: every public name, and Pyro's module-local parameters whenever a model is built.
How fast it answers is measured in ``bench/cli_startup.py``, not here."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_layering import PACKAGE, imported_modules, module_name

import pplvm
from pplvm.cli import build_parser

HEAVY = {"torch", "pyro"}
SUBCOMMANDS = re.search(r"\{([^}]*)\}", build_parser().format_usage()).group(1).split(",")
TINY_CARD = """
name = "tiny"
[model]
family = "gmm"
components = 2
[objective]
name = "enum"
[data]
source = "synthetic_gmm"
n = 60
components = 2
[training]
epochs = 1
progress = false
"""


def run_python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def cli_imports(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m pplvm.cli ARGS``: the process, and the top-level packages
    it imported (importtime writes ``import time: self | cumulative | module`` lines to stderr)."""
    proc = run_python("-X", "importtime", "-m", "pplvm.cli", *args)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    modules = {line.rpartition("|")[2].strip().split(".")[0] for line in lines}
    return proc, modules


def messages(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]


def test_the_subcommands_are_found():
    assert {"fit", "evaluate", "sample", "summary", "resume", "list"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("args", [["--version"], ["--help"], *([name, "--help"] for name in SUBCOMMANDS)])
def test_version_and_help_import_neither_torch_nor_pyro(args):
    proc, modules = cli_imports(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pplvm" in modules  # the importtime report was read
    assert not modules & HEAVY
    expected = f"pplvm {pplvm.__version__}" if args == ["--version"] else "usage: pplvm"
    assert proc.stdout.startswith(expected)


@pytest.mark.parametrize(
    "args, message",
    [
        (["nonsense"], "argument command: invalid choice: 'nonsense'"),
        (["fit", "card.toml", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["fit", "missing.toml"], "pplvm: error: card 'missing.toml': no such file"),
        (["sbc", "missing.toml", "--sims", "3"], "pplvm: error: card 'missing.toml': no such file"),
        (["render", "{bad}"], "is not valid TOML"),
        (["fit", "{dir}"], "is a directory; expected a TOML file"),
    ],
)
def test_argument_and_card_file_errors_come_before_torch(tmp_path, args, message):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nfamily = 'gmm'\n")
    args = [a.format(bad=bad, dir=tmp_path) for a in args]
    proc, modules = cli_imports(*args)
    assert proc.returncode == 2
    assert message in messages(proc)[-1]
    assert "Traceback" not in proc.stderr
    assert not modules & HEAVY


def test_import_pplvm_imports_neither_torch_nor_pyro_until_a_submodule_is_used():
    """``import pplvm`` is light; its submodules are still attributes (``pplvm.data.as_sequences``
    after a bare ``import pplvm``, as the README writes it)."""
    code = (
        "import sys, pplvm\n"
        "pplvm.__version__, pplvm.CardError\n"
        "light = ' '.join(sys.modules)\n"
        "pplvm.data.as_sequences, pplvm.config.dump_card, pplvm._progress.reporting, pplvm.workflows\n"
        "print(light)\n"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pplvm.errors" in proc.stdout.split()
    assert not {m.split(".")[0] for m in proc.stdout.split()} & HEAVY


@pytest.mark.parametrize("name", pplvm.__all__)
def test_each_public_name_is_its_modules_object(name):
    home = importlib.import_module(pplvm._LAZY.get(name, ".errors"), "pplvm")
    assert getattr(pplvm, name) is getattr(home, name)
    assert name in dir(pplvm)


def test_the_lazy_names_are_public_and_others_are_not_there():
    from pplvm import Run, load_card  # the from-import form as well
    from pplvm.config import load_card as home_load_card
    from pplvm.run import Run as HomeRun

    assert Run is HomeRun and load_card is home_load_card
    assert set(pplvm._LAZY) <= set(pplvm.__all__)
    assert pplvm._SUBMODULES <= set(dir(pplvm))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        getattr(pplvm, "no_such_name")


def test_the_installed_version_is_the_package_version():
    """pyproject.toml reads the version from ``pplvm.__version__``: what pip shows is what
    ``pplvm --version`` prints."""
    assert importlib.metadata.version("pplvm") == pplvm.__version__


def test_a_model_built_after_import_pplvm_keeps_its_parameters(tmp_path):
    """In a fresh process: ``import pplvm`` (which imports no Pyro), then fit. Pyro's
    module-local parameters are on, and the global parameter store stays empty."""
    (tmp_path / "tiny.toml").write_text(TINY_CARD)
    code = (
        "import pplvm\n"
        "run = pplvm.fit(pplvm.load_card('tiny.toml'), out='run')\n"
        "import pyro\n"
        "print(pyro.settings.get('module_local_params'), list(pyro.get_param_store().keys()))\n"
    )
    proc = run_python("-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "True []"


def test_importing_a_family_module_directly_sets_module_local_params():
    code = "import pplvm.families.gmm, pyro; print(pyro.settings.get('module_local_params'))"
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"


def test_every_module_that_imports_pyro_sets_module_local_params_first():
    """Each module that imports Pyro imports :mod:`pplvm._pyro_settings`, or lies in a package
    whose ``__init__`` does (and so runs first)."""

    def sets(path: Path) -> bool:
        found = imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")
        return any(m == "pplvm._pyro_settings" for _, m in found)

    def imports_pyro(path: Path) -> bool:
        tree = ast.parse(path.read_text())
        names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0]
        return any(name.split(".")[0] == "pyro" for name in names)

    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "_pyro_settings.py" or not imports_pyro(path):
            continue
        packages = [p / "__init__.py" for p in path.parents if p != PACKAGE and PACKAGE in p.parents]
        if not sets(path) and not any(sets(init) for init in packages):
            missing.append(str(path.relative_to(PACKAGE.parent)))
    assert missing == []
