"""ml_dtypes 0.7.0 as a second oracle, beside the environment's 0.6.0.

The two versions cannot share one process (the same module names, the same dtypes registered
with NumPy), so 0.7.0 lives in a folder of its own inside the venv — the Makefile installs it
with `pip install --no-deps --target .venv/ml_dtypes-0.7 ml_dtypes==0.7.0` — and runs in a child
process that this module starts once and talks to over pipes: `encode` sends a float array and
reads the codes back, `decode` sends codes and reads float32 values back.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

VERSION = "0.7.0"
DIR = Path(sys.prefix) / "ml_dtypes-0.7"

_WORKER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, ml_dtypes
inp, out = sys.stdin.buffer, sys.stdout.buffer
def send(head, payload=b""):
    out.write((json.dumps(head) + "\n").encode()); out.write(payload); out.flush()
send({"version": ml_dtypes.__version__, "file": ml_dtypes.__file__})
for line in inp:
    req = json.loads(line)
    raw = inp.read(req["nbytes"])
    a = np.frombuffer(raw, dtype=req["dtype"]).reshape(req["shape"])
    dt = getattr(ml_dtypes, req["format"])
    with np.errstate(all="ignore"):
        if req["op"] == "encode":
            r = a.astype(dt).view(np.uint8)
        else:
            r = a.view(dt).astype(np.float32)
    r = np.ascontiguousarray(r)
    send({"dtype": r.dtype.str, "shape": list(r.shape), "nbytes": r.nbytes}, r.tobytes())
"""


class MlDtypes07:
    def __init__(self):
        if not (DIR / "ml_dtypes").is_dir():
            raise RuntimeError(f"ml_dtypes {VERSION} is not installed in {DIR}: run make install (or "
                               f"pip install --no-deps --target {DIR} ml_dtypes=={VERSION})")
        env = dict(os.environ, PYTHONNOUSERSITE="1")
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(DIR)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        hello = self._read_head()
        if hello["version"] != VERSION or not hello["file"].startswith(str(DIR)):
            raise RuntimeError(f"the child process imported ml_dtypes {hello['version']} from {hello['file']}, "
                               f"not {VERSION} from {DIR}")

    def _read_head(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the ml_dtypes {VERSION} child process ended (exit status {self.proc.poll()})")
        return json.loads(line)

    def _call(self, op: str, a: np.ndarray, fmt: str) -> np.ndarray:
        a = np.ascontiguousarray(a)
        head = {"op": op, "format": fmt, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": a.nbytes}
        self.proc.stdin.write((json.dumps(head) + "\n").encode())
        self.proc.stdin.write(a.tobytes())
        self.proc.stdin.flush()
        r = self._read_head()
        return np.frombuffer(self.proc.stdout.read(r["nbytes"]), dtype=r["dtype"]).reshape(r["shape"]).copy()

    def encode(self, x: np.ndarray, fmt: str) -> np.ndarray:
        """x (float16/32/64) cast to ml_dtypes' `fmt` (e.g. "float8_e8m0fnu"): the codes, uint8."""
        return self._call("encode", x, fmt)

    def decode(self, codes: np.ndarray, fmt: str) -> np.ndarray:
        """uint8 codes of ml_dtypes' `fmt` -> float32."""
        return self._call("decode", np.asarray(codes, np.uint8), fmt)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
