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


def _prefer_nearest_target(find_obj):
    """
    Resolve an unqualified name that several documented modules define (the
    server's and the client's ``Channel`` and ``Socket``) to the one nearest
    the referring module: the longest shared module prefix, then the
    shortest path.  Sphinx would warn and take the first it found.
    """

    def find_nearest(self, env, modname, classname, name, type, searchmode=0):
        matches = find_obj(self, env, modname, classname, name, type, searchmode)
        if len(matches) > 1 and modname:
            here = modname.split(".")

            def rank(match):
                parts = match[0].split(".")[:-1]
                shared = 0
                for a, b in zip(parts, here):
                    if a != b:
                        break
                    shared += 1
                return (-shared, len(parts))

            ranked = sorted(matches, key=rank)
            if rank(ranked[0]) != rank(ranked[1]):
                return ranked[:1]
        return matches

    return find_nearest


def setup(app):
    from sphinx.domains.python import PythonDomain

    PythonDomain.find_obj = _prefer_nearest_target(PythonDomain.find_obj)
