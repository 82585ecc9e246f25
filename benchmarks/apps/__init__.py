"""
Benchmark apps: the endpoints a workload starts with ``twistd -n phoenix
--endpoint benchmarks.apps.<module>:Endpoint`` when the demo app is not
enough (the tables print that option next to the figures).

``memtrace``
    the demo app, plus tracemalloc driven by signals (``fanout --memory-breakdown``).
``presence``
    a cluster node whose presences are tracked server-side, driven on its
    standard input (``presence``).
"""
