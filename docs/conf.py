"""Sphinx configuration for the twisted_phoenix documentation."""

import os
import sys

# Document the tree this file is in, not an installed copy.
sys.path.insert(0, os.path.abspath(".."))

from twisted_phoenix import __version__  # noqa: E402

project = "twisted_phoenix"
author = "the twisted_phoenix authors"
copyright = "the twisted_phoenix authors"
version = release = __version__

extensions = ["sphinx.ext.autodoc"]

# Docstrings are reST with Sphinx field lists (:param:, :ivar:, :raises:).
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
