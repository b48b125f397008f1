"""Sphinx configuration of pplvm's documentation site (``make docs``).

The build reads the pplvm next to this folder, downloads nothing, and renders the notebooks
with their stored outputs (``make notebooks`` refreshes them). The reference pages are written
at build time by the extension in ``_ext/pplvm_docs`` from the schema, the registries and the
parser, so a documented option always exists.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "_ext")]  # this checkout's pplvm, then the extension
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pplvm  # noqa: E402

project = "pplvm"
author = "the pplvm authors"
copyright = "the pplvm authors, Apache-2.0"
release = version = pplvm.__version__

extensions = [
    "myst_nb",  # MyST Markdown pages and notebooks (it brings myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",  # MathJax is loaded by the reader's browser; the build fetches nothing
    "pplvm_docs",
]
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# MyST: $...$ and $$...$$ math, ::: fences, definition lists; headings get anchors for links
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks' stored outputs; tests/test_notebooks.py executes them
nb_merge_streams = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # a method documents itself (not with torch.nn.Module.forward's text)
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Nitpicky (-n): every cross-reference must resolve. Targets in other projects' documentation
# cannot be resolved offline (no intersphinx inventories are fetched), so only those are let go;
# a broken reference to anything in pplvm still fails the build.
_EXTERNAL = r"(torch|pyro|numpy|np|pydantic|pydantic_core|annotated_types|arviz|xarray|matplotlib|scipy|sklearn"
_EXTERNAL += r"|tqdm|argparse|pathlib|os|typing|collections|abc|enum|dataclasses|contextlib|types|functools|io|re"
_EXTERNAL += r"|Path|Tensor|NoneType"  # names a signature's string annotation leaves unqualified
_EXTERNAL += r"|_PydanticGeneralMetadata|FieldInfo|Ge|Gt|Le|Lt|MinLen|MaxLen)"  # a constrained field's type
nitpick_ignore_regex = [(r"py:.*", _EXTERNAL + r"(\..*)?")]
nitpick_ignore_regex.append((r"py:class", r".*\[.*"))  # a type expression the signature parser split, not a name

smartquotes = False  # card values and commands are copied as shown
html_theme = "furo"
html_title = f"pplvm {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
