"""
Benchmarks for twisted_phoenix, run on demand: ``python -m benchmarks``.

They are not tests: they print their figures, comparing twisted_phoenix with
plain Autobahn side by side in one run.  See ``benchmarks/README.rst`` and
``docs/benchmarks.rst``.
"""
