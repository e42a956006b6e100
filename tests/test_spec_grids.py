"""The IQ codebooks and tables written into spec/ggml/grids/ are the ones the code uses (and
tests/test_iq_grids_vs_ggml.py holds the code to ggml's)."""
from pathlib import Path

import numpy as np
import pytest

from tools.gen_spec_grids import GRIDS, OUT, files


@pytest.mark.parametrize("name, text", sorted(files().items()))
def test_spec_grid_files_are_the_codes(name, text):
    assert (OUT / name).read_text() == text, f"spec/ggml/grids/{name} is stale: run python -m tools.gen_spec_grids"


def test_grid_text_reads_back_to_the_dequantization_tables():
    from refquant.ggml import grids
    for stem, (name, _, width) in GRIDS.items():
        lines = [ln for ln in (OUT / f"{stem}.txt").read_text().splitlines() if not ln.startswith("#")]
        words = np.array([int(ln.split()[1], 16) for ln in lines], dtype=np.uint64)
        back = words.view(np.uint8).reshape(len(lines), 8)[:, :width].view(np.int8).astype(np.int16)
        want = grids.dequant_grid(name)
        if name != "iq1s":
            back = back & 0xFF
        np.testing.assert_array_equal(back, want)
