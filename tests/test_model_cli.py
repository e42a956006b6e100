"""`refquant perplexity` on SmolLM2 with a short context, and its bad-input errors."""
import re

from refquant.cli import main
from refquant.model.perplexity import model_perplexity
from refquant.models import botchan_path, smollm2_path


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
