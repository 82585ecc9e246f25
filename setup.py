"""Packaging for twisted_phoenix."""

from setuptools import find_packages, setup

with open("README.rst", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="twisted_phoenix",
    version="0.1.0",
    description="Phoenix Channels for Python, on Twisted and Autobahn",
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    # The twistd plugin lives in twistd_plugins/ and installs into Twisted's
    # own twisted/plugins namespace; twistd_plugins has no __init__.py on
    # purpose (one would hide every other Twisted plugin).
    packages=find_packages(include=["twisted_phoenix", "twisted_phoenix.*"]) + ["twisted.plugins"],
    package_dir={"twisted.plugins": "twistd_plugins"},
    package_data={"twisted.plugins": ["phoenix.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "autobahn>=23.1",
        "pyopenssl>=23.0",
        "orjson>=3.8",
    ],
    extras_require={
        "test": ["pytest", "pytest-twisted", "hypothesis"],
        "docs": ["sphinx"],
    },
    entry_points={"console_scripts": ["twisted-phoenix = twisted_phoenix.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP",
    ],
)
