"""The package list, which pyproject.toml cannot state: refquant/ installs as `refquant`, and the
accelerated backends' folder backends/ as `refquant_backends` (a name of its own, not a generic
top-level `backends`). tools/, tests/ and benchmarks/ are not installed. Everything else is in
pyproject.toml."""
from setuptools import find_packages, setup

BACKENDS = "refquant_backends"

setup(
    packages=find_packages(include=["refquant", "refquant.*"])
    + [BACKENDS + p[len("backends"):] for p in find_packages(include=["backends", "backends.*"])],
    package_dir={BACKENDS: "backends"},
)
