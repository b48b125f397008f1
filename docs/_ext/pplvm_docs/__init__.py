"""pplvm's Sphinx extension: before Sphinx reads the sources it writes the generated reference
(card keys from the schema, one page per registered family, guide and objective, the command
line from argparse, the Python API) into ``docs/reference/``, and copies the notebooks into
``docs/tutorials/``. What lacks documentation is a warning, so ``-W`` fails the build."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from . import api, cards, cli, modules, plugins, resolve
from .rst import write

#: the generated folder (gitignored), below the docs source directory
GENERATED = "reference"


def generate(app: Any) -> None:
    src = Path(app.srcdir)
    pages = {"reference/card": cards.card_page(app), "reference/cli": cli.page(app), "reference/api": api.page(app)}
    pages.update(plugins.pages(app))
    pages["reference/modules"] = modules.page(api.DOCUMENTED_MODULES)
    wanted = {src / f"{name}.rst" for name in pages}
    for path in (src / GENERATED).rglob("*.rst"):
        if path not in wanted:  # an entry no longer registered
            path.unlink()
    for name, content in pages.items():
        write(src / f"{name}.rst", content)
    copy_notebooks(src)


def copy_notebooks(src: Path) -> None:
    """The notebooks in ``notebooks/`` as pages of ``docs/tutorials/`` (copied when changed)."""
    target = src / "tutorials"
    notebooks = sorted((src.parent / "notebooks").glob("*.ipynb"))
    for stale in set(target.glob("*.ipynb")) - {target / p.name for p in notebooks}:
        stale.unlink()
    for path in notebooks:
        copy = target / path.name
        if not copy.is_file() or copy.read_bytes() != path.read_bytes():
            shutil.copyfile(path, copy)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-docstring", api.prose_attribute, priority=400)  # before napoleon's
    app.connect("autodoc-process-docstring", resolve.absolute_refs, priority=400)
    app.connect("autodoc-process-docstring", api.check_docstring)
    app.connect("missing-reference", resolve.missing_reference)
    app.connect("autodoc-skip-member", api.skip_member)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
