"""
The Sphinx documentation builds without a single warning, so that it cannot
rot: a docstring with broken markup, a module that no longer imports, a
page missing from the table of contents all fail this test.  CI runs the
whole suite, so every CI run builds the documentation with warnings as
errors (Sphinx comes with the ``test`` extra).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

#: Seconds the build may take (it takes about 10 on a busy 2-core machine).
TIMEOUT = 180


class DocsTests(SynchronousTestCase):
    """
    ``docs/``, built with ``sphinx-build -W``.
    """

    def test_build(self) -> None:
        """The HTML documentation builds with warnings as errors, every page included."""
        out = Path(tempfile.mkdtemp(prefix="twisted_phoenix-docs-"))
        self.addCleanup(shutil.rmtree, out, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = subprocess.run(
            [
                sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                "-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html"),
            ],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=TIMEOUT,
        )
        self.assertEqual(
            result.returncode, 0,
            f"sphinx-build failed (install the docs with pip install '.[test]'):\n{result.stdout}\n{result.stderr}",
        )
        pages = {p.stem for p in (ROOT / "docs").glob("*.rst")}
        built = {p.stem for p in (out / "html").glob("*.html")}
        self.assertLessEqual(pages, built)
        api = (out / "html" / "api.html").read_text(encoding="utf-8")
        for name in ("twisted_phoenix.endpoint.Endpoint", "twisted_phoenix.channel.Channel", "twisted_phoenix.token.verify"):
            self.assertIn(f'id="{name}"', api)

    def test_readme_command(self) -> None:
        """The README's documentation command also treats warnings as errors."""
        readme = (ROOT / "README.rst").read_text(encoding="utf-8")
        commands = re.findall(r"^ +(python -m sphinx .*)$", readme, re.MULTILINE)
        self.assertEqual(commands, ["python -m sphinx -W -b html docs docs/_build/html"])
