"""
The servers the yardstick workloads compare twisted_phoenix with: the
plain-Autobahn floors (with an echo for the round trip) and the Python peers
(``websockets``, python-socketio on aiohttp, Daphne + Django Channels with
the Redis channel layer).  Each is a script run as a child process by the
harness; see ``benchmarks/README.rst``.
"""
