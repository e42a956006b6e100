"""`refquant perplexity` on SmolLM2 with a short context, and its bad-input errors."""
import re

from refquant.cli import main
from refquant.model.perplexity import model_perplexity
from tools.models import botchan_path, smollm2_path


def test_perplexity_cli(capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes(botchan_path().read_bytes()[:1500])
    rc = main(["perplexity", str(smollm2_path()), "--text", str(text), "--ctx", "16", "--chunks", "2",
               "--base", str(smollm2_path())])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"^\[1\][0-9.]+,\[2\][0-9.]+$", out, re.M)
    ppl = float(re.search(r"PPL = ([0-9.]+) over 2 chunks \(14 scored tokens\)", out).group(1))
    r = model_perplexity(smollm2_path(), text.read_bytes().decode("utf-8"), 16, 2)
    assert abs(ppl - r.ppl) < 5e-5 * r.ppl
    assert "mean KLD = 0.000000" in out and "same top-1 = 100.000%" in out


def test_perplexity_cli_errors(capsys, tmp_path):
    assert main(["perplexity", str(smollm2_path()), "--text", str(tmp_path / "none.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    short = tmp_path / "s.txt"
    short.write_text("Too short.")
    assert main(["perplexity", str(smollm2_path()), "--text", str(short), "--ctx", "64"]) == 2
    assert "need at least 128 tokens" in capsys.readouterr().err


def test_imatrix_cli(capsys, tmp_path):
    """`refquant imatrix` writes a GGUF imatrix that the llama-quantize reader takes: every
    linear layer of the blocks, 2 chunks of 16 rows each. (Its values against llama-imatrix:
    tests/test_model_vs_llamacpp_tools.py.)"""
    from refquant.ggml.imatrix import read_imatrix
    text = tmp_path / "t.txt"
    text.write_bytes(botchan_path().read_bytes()[:1500])
    out = tmp_path / "im.gguf"
    rc = main(["imatrix", str(smollm2_path()), "--text", str(text), "-o", str(out), "--ctx", "16", "--chunks", "2"])
    assert rc == 0 and "wrote 210 entries (2 chunks of 16 tokens)" in capsys.readouterr().out
    im = read_imatrix(out)
    assert (im.chunk_count, im.chunk_size, im.datasets) == (2, 16, ["t.txt"])
    assert len(im.entries) == 210 and "blk.0.ffn_down.weight" in im.entries and "output.weight" not in im.entries
    assert main(["imatrix", str(smollm2_path()), "--text", str(tmp_path / "none.txt"), "-o", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
