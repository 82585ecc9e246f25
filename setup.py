"""Packaging for twisted_phoenix."""

from pathlib import Path

from setuptools import find_packages, setup

long_description = (Path(__file__).resolve().parent / "README.rst").read_text(encoding="utf-8")

setup(
    name="twisted_phoenix",
    version="0.1.0",
    description="Phoenix Channels for Python, on Twisted and Autobahn",
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    # The twistd plugin lives in twistd_plugins/ and installs as
    # twisted/plugins/phoenix.py, next to Twisted's own plugins.
    # twistd_plugins has no __init__.py on purpose: installed as
    # twisted/plugins/__init__.py it would replace Twisted's and hide every
    # other plugin.  tests/test_packaging.py checks a real install.
    packages=find_packages(include=["twisted_phoenix", "twisted_phoenix.*"]) + ["twisted.plugins"],
    package_dir={"twisted.plugins": "twistd_plugins"},
    # Files served next to the sockets: the phoenix.js client (npm phoenix
    # 1.8.16, with its licence) and the chat example's page.
    package_data={
        "twisted_phoenix": ["phoenix_js/*"],
        "twisted_phoenix.examples.chat": ["static/*"],
    },
    install_requires=[
        "twisted[tls]>=23.10",
        "autobahn>=23.1",
        "txaio>=23.1",
        "pyopenssl>=23.0",
        # twisted_phoenix.token: XChaCha20-Poly1305 and AES-GCM for encrypted
        # tokens (already a dependency of pyOpenSSL).
        "cryptography>=38",
        "orjson>=3.8",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-twisted",
            "hypothesis",
            # tests/test_packaging.py builds a wheel without build isolation
            # and installs it with pip --python (pip 22.3 or newer).
            "setuptools>=64",
            "wheel",
            "pip>=22.3",
            # tests/test_docs.py builds the documentation.
            "sphinx",
            # tests/test_redis_*.py: the Redis adapter (they also need a
            # redis-server; Debian: redis-server).
            "txredisapi>=1.6",
            "hiredis>=2",
            # tests/test_metrics*.py: the Prometheus exposition.
            "prometheus-client>=0.17",
        ],
        # twistd phoenix --metrics tcp:9100: Prometheus metrics at /metrics
        # (twisted_phoenix.metrics).
        "metrics": ["prometheus-client>=0.17"],
        # twistd phoenix --pubsub redis://...: the Redis PubSub adapter
        # (twisted_phoenix.adapters.redis).  hiredis is txredisapi's fast
        # parser; without it txredisapi parses in Python, ~10x slower.
        "redis": ["txredisapi>=1.6", "hiredis>=2"],
        "docs": ["sphinx"],
        # The benchmarks' peers, profiler and plot (python -m benchmarks all;
        # benchmarks/README.rst).  Never needed by the package itself; the
        # Channels peer also needs a redis-server (Debian: redis-server).
        "bench": [
            "py-spy",
            "matplotlib",
            "websockets>=14",
            "python-socketio>=5,<6",
            "aiohttp",
            "daphne>=4",
            "channels>=4,<5",
            "channels_redis>=4",
        ],
    },
    entry_points={"console_scripts": ["twisted-phoenix = twisted_phoenix.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP",
    ],
)
