"""Sphinx configuration of the filexfer site: MyST Markdown, the furo theme.

Build it with ``sphinx-build -W --keep-going docs docs/_build/html`` (what
tests/test_docs_site.py runs). Every picture is made during the build from
the code and from docs/_data/ (docs/_ext/), into docs/_generated/.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "_ext"), os.path.dirname(HERE)]

import filexfer  # noqa: E402

project = "filexfer"
author = "the filexfer authors"
copyright = "the filexfer authors"  # noqa: A001 - Sphinx's name
release = version = filexfer.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "fxdocs",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated/*.dot", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# A broken reference to the public API fails the build (-W); names outside
# filexfer (Twisted, zope.interface, the standard library) have no inventory
# here (the build is offline) and are shown as text by fxdocs instead.
nitpicky = True

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"filexfer {release}"
pygments_style = "friendly"

# Pygments has no lexer for HAProxy's configuration (docs/deploy.md shows
# one, and tests/test_integration_proxy.py runs that very block): its
# "keyword value" lines and "#" comments read well as an INI-like file.
from pygments.lexers.configs import IniLexer  # noqa: E402
from sphinx.highlighting import lexers  # noqa: E402

lexers["haproxy"] = IniLexer()
