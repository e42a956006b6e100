"""The compressed-tensors preset vectors in spec/vectors/compressed-tensors are what refquant
writes today (regenerated and compared file by file), and each preset's tensors decompress, by
compressed-tensors' own compressor, to the stored `decoded` weight."""
import json
import warnings
from pathlib import Path

import numpy as np

import torch  # noqa: E402  (an oracle)
from refquant.layouts import compressed_tensors as CT
from refquant.pipelines import ct_vectors

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import ml_dtypes
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from tools.oracles.pytorch import to_numpy, to_torch

SPEC = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "compressed-tensors"


def test_files_are_current(tmp_path):
    ct_vectors.write(tmp_path)
    ours = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert ours == sorted(p.relative_to(SPEC) for p in SPEC.rglob("*") if p.is_file())
    for rel in ours:
        a, b = (tmp_path / rel).read_bytes(), (SPEC / rel).read_bytes()
        assert a == b, rel


def test_stored_tensors_decompress_to_decoded():
    for d in sorted(p for p in SPEC.iterdir() if p.is_dir()):
        meta = json.loads((d / "vectors.json").read_text())
        t = {}
        for k, m in meta["tensors"].items():
            a = np.load(d / f"{k}.npy")
            t[k] = a.view(getattr(ml_dtypes, m["dtype"])) if m["dtype"] in ("bfloat16", "float8_e4m3fn") else a
        scheme = preset_name_to_scheme(meta["preset"], ["Linear"])
        out = BaseCompressor.get_value_from_registry(meta["format"]).decompress(
            {k: to_torch(v) for k, v in t.items()}, scheme)["weight"]
        theirs = np.ascontiguousarray(to_numpy(out))
        stored = np.load(d / "decoded.npy")
        assert theirs.dtype.name == meta["decoded"]["dtype"], d.name
        np.testing.assert_array_equal(theirs.view(stored.dtype), stored, err_msg=d.name)
