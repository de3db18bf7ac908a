"""Sphinx configuration of numbarnn's documentation: ``pip install -e ".[docs]"``, then
``sphinx-build -W --keep-going -b html docs docs/_build/html`` (as CI runs it)."""

import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # the checkout's numbarnn, also when it is not installed

import numbarnn  # noqa: E402  (after the path is set)

project = "numbarnn"
author = "the numbarnn developers"
copyright = f"{time.gmtime().tm_year}, {author}"
version = release = numbarnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",  # the guide's pages are Markdown, moved from the README
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = [
    "_build",
    "examples/README.rst",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.md5",
    "auto_examples/*.json",
]
templates_path = ["_templates"]

# -- API reference: autosummary writes one page per public name (api/generated/), numpydoc renders the docstrings.
autosummary_generate = True
autodoc_typehints = "none"  # the docstrings' Parameters sections say the types and shapes (L, N, D, H_in, H_out)
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # signatures show `dtype=np.float32`, as written, not the class repr
numpydoc_show_class_members = False  # the class template lists the methods itself
numpydoc_class_members_toctree = False
# Validate every public docstring when the docs build (with -W a failed check fails the build): all of numpydoc's
# checks except those of style (summary on one line, capitals, periods, quotes) and of sections the project does not
# write (See Also, Examples, an extended summary; the guide holds the examples).
numpydoc_validation_checks = {"all", "SA01", "EX01", "ES01", "SS03", "SS05", "SS06", "PR08", "PR09", "GL01", "GL02"}
numpydoc_validation_exclude = {
    # The drop-ins' constructors are torch's (*args, **kwargs here): torch documents their parameters.
    r"^numbarnn\.torch\.(RNN|LSTM|GRU|RNNCell|LSTMCell|GRUCell)$",
}

# -- Markdown (MyST): heading anchors so that pages can link to each other's sections, as the README did.
myst_heading_anchors = 3

# -- gallery: each example runs during the build; its figures and output go into the page.
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",  # run every plot_*.py
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 1,
    "reset_modules": ("matplotlib",),
}

html_theme = "pydata_sphinx_theme"
html_title = f"numbarnn {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_show_sourcelink = False
