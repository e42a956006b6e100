"""Backends for the scale-out fault tests (tests/test_scale.py), loaded by path on Dask workers:
one whose worker dies the first time it quantizes, one that refuses a tensor's rows."""
import os

from refquant.backend import Backend
from refquant.errors import InputError


def set_env(key, value):
    """Set an environment variable on a worker (client.run(set_env, ...))."""
    os.environ[key] = value


class Dying(Backend):
    name = "dying"

    def quantize_rows(self, fmt, x, imatrix):
        marker = os.environ.get("REFQUANT_TEST_DIE_MARKER")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)               # the worker process dies mid-task
        return super().quantize_rows(fmt, x, imatrix)


class Failing(Backend):
    name = "failing"

    def quantize_rows(self, fmt, x, imatrix):
        raise InputError(f"{fmt.name} refused by this backend")

DYING = Dying()
FAILING = Failing()


class Broken(Backend):
    """Claims Q4_0 and Q8_0 quantize and dequantize; its Q4_0 quantizer corrupts every row from
    the third on (a tiling bug), so the conformance matrix has a failure to reproduce."""
    name = "broken"
    reference = "scale_backends:BROKEN"

    def claims(self):
        return {(op, k) for op in ("quantize", "dequantize") for k in ("Q4_0", "Q8_0")}

    def quantize_rows(self, fmt, x, imatrix):
        out = super().quantize_rows(fmt, x, imatrix)
        if fmt.name == "Q4_0" and out.shape[0] > 2:
            out = out.copy()
            out[2:, -1] ^= 1
        return out


BROKEN = Broken()


def get_env(key):
    """An environment variable of a worker (client.run(get_env, ...))."""
    return os.environ.get(key)
