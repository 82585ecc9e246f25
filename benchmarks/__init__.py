"""
Benchmarks for twisted_phoenix, run on demand: ``python -m benchmarks <workload>``.

They are not tests: they print their figures, twisted_phoenix (started as
``twistd -n phoenix``) side by side with plain-Autobahn floors, Python peers
or any external server, and what the server does under a connection storm,
stalled clients, a flood and an hour of mixed traffic.  See
``benchmarks/README.rst`` and ``docs/benchmarks.rst``.
"""
