"""The documentation site builds with warnings as errors (nitpicky: every cross-reference names
something that exists), and holds what a user looks up: every card key of the schema under its
section, every subcommand and option of the CLI, a page per registered family, guide and
objective, and every notebook rendered with its figures.

It runs Sphinx (the ``docs`` extra, installed in the Python 3.11 venv) in a subprocess, as
``make docs`` does; ``make test-new`` leaves this file out, its venv has no Sphinx.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "html"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html", str(ROOT / "docs"), str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, f"the docs build failed (pip install 'pplvm[docs]'):\n{proc.stderr[-6000:]}"
    return out


def _sections(html: str) -> dict[str, str]:
    """The card page cut at its section anchors: anchor id -> the HTML up to the next one."""
    parts = re.split(r'id="(card-[\w-]+)"', html)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _id(name: str) -> str:
    """A name as docutils writes it into an HTML id."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _keys(model: type[BaseModel]) -> list[str]:
    """A section's keys, and the keys of the tables it holds (``nodes[].name`` of ``model.nodes``)."""
    out = []
    for key, field in model.model_fields.items():
        out.append(key)
        inner = [a for a in (field.annotation, *typing.get_args(field.annotation)) if isinstance(a, type)]
        prefix = f"{key}[]." if typing.get_origin(field.annotation) is list else f"{key}."
        out += [prefix + k for a in inner if issubclass(a, BaseModel) for k in _keys(a)]
    return out


def test_card_reference_lists_every_key(site):
    from pplvm.config import TAGGED, _registry, card_schema

    sections = _sections((site / "reference" / "card.html").read_text())
    missing = []
    for section, field in card_schema().model_fields.items():
        if section in TAGGED:
            registry = _registry(section).in_order()
            entries = [(f"card-{section}-{_id(name)}", entry.Config) for name, entry in registry]
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            entries = [(f"card-{section}", field.annotation)]
        else:
            continue
        for anchor, config in entries:
            html = sections.get(anchor, "")
            missing += [f"{anchor}: {k}" for k in _keys(config) if f'<span class="pre">{k}</span>' not in html]
    top = (site / "reference" / "card.html").read_text()
    missing += [k for k in ("name", "description") if f'<span class="pre">{k}</span>' not in top]
    assert not missing


def test_cli_reference_lists_every_command_and_option(site):
    import argparse

    from pplvm.cli import build_parser

    html = (site / "reference" / "cli.html").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices
    for name, parser in sub.choices.items():
        assert f'id="cli-{name}"' in html, name
        section = html.split(f'id="cli-{name}"', 1)[1].split('<section id="cli-', 1)[0]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue  # -h, in the usage line
            for option in action.option_strings or [action.metavar or action.dest]:
                assert option in section, (name, option)


def test_a_page_per_registered_family_guide_and_objective(site):
    from pplvm import FAMILIES, GUIDES, OBJECTIVES

    for folder, registry in (("families", FAMILIES), ("guides", GUIDES), ("objectives", OBJECTIVES)):
        for name in registry:
            page = site / "reference" / folder / f"{name}.html"
            assert page.is_file(), page
    gmm = (site / "reference" / "families" / "gmm.html").read_text()
    from pplvm.objectives import admissions

    guides, objectives = admissions("gmm", FAMILIES["gmm"])
    assert all(f'href="../guides/{g}.html"' in gmm for g in guides)  # the admitted ones, linked
    assert all(f'href="../objectives/{o}.html"' in gmm for o in objectives)


def test_every_notebook_is_rendered_with_its_figures(site):
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for notebook in notebooks:
        page = site / "tutorials" / f"{notebook.stem}.html"
        images = re.findall(r'<img[^>]+src="([^"]+\.png)"', page.read_text())
        assert images, notebook.name
        assert all((page.parent / src).is_file() for src in images), notebook.name
