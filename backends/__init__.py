"""Accelerated backends for refquant, one package each, registered under the entry point
group `refquant.backends` (names `numba`, `cupy`). Each mirrors the spec's module layout. This
folder installs as the package `refquant_backends` (setup.py): `from refquant_backends.numba
import NumbaBackend`."""
