"""The refquant command line: inspect, dequantize, quantize, and its handling of bad input."""
import subprocess
import sys

import numpy as np
import pytest

import refquant
from refquant.cli import main
from refquant.io.gguf import GGUFFile
from tools.models import smollm2_path
from test_gguf_io import small_model


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "m.gguf"
    small_model(p)
    return p


def test_inspect_real_model(capsys):
    assert main(["inspect", str(smollm2_path())]) == 0
    out = capsys.readouterr().out
    assert "GGUF v3, 33 metadata keys, 272 tensors" in out
    assert "general.architecture" in out and "'llama'" in out
    line = next(l for l in out.splitlines() if l.strip().startswith("blk.0.ffn_down.weight"))
    assert line.split()[1:] == ["Q4_1", "[576,", "1536]", "552,960", "5.00"]


def test_dequantize_then_quantize(model, tmp_path, ggml):
    f32 = tmp_path / "f32.gguf"
    assert main(["dequantize", str(model), str(f32), "--no-progress"]) == 0
    with GGUFFile(model) as a, GGUFFile(f32) as b:
        assert [t.type_name for t in b.tensors] == ["F32", "F32"]
        np.testing.assert_array_equal(b.dequantize("a.weight", refquant.dequantize), a.dequantize("a.weight", refquant.dequantize))
        assert b.get("general.file_type") == 0
    q = tmp_path / "q5.gguf"
    assert main(["quantize", str(f32), str(q), "--type", "q5_1", "--no-progress"]) == 0  # llama.cpp's Q5_1
    with GGUFFile(f32) as a, GGUFFile(q) as b:
        assert [t.type_name for t in b.tensors] == ["Q5_1", "F32"]  # the 1-D norm stays F32
        x = a.dequantize("a.weight", refquant.dequantize)
        np.testing.assert_array_equal(np.asarray(b.raw("a.weight")), ggml.quantize(x, "Q5_1"))
        assert b.get("general.file_type") == 9


def test_quantize_file_type_on_a_backend(model, tmp_path, ggml, capsys):
    """--backend reaches llama.cpp's file types too: the Numba backend's Q5_1 rows, ggml's bytes."""
    pytest.importorskip("numba")
    f32, q = tmp_path / "f32.gguf", tmp_path / "q5.gguf"
    assert main(["dequantize", str(model), str(f32), "--no-progress"]) == 0
    assert main(["quantize", str(f32), str(q), "--type", "q5_1", "--backend", "refquant_backends.numba:NumbaBackend",
                 "--no-progress"]) == 0
    with GGUFFile(f32) as a, GGUFFile(q) as b:
        np.testing.assert_array_equal(np.asarray(b.raw("a.weight")),
                                      ggml.quantize(a.dequantize("a.weight", refquant.dequantize), "Q5_1"))
    capsys.readouterr()  # the runs' closing summaries
    err = one_line_error(capsys, ["quantize", str(f32), str(tmp_path / "o.gguf"), "--type", "Q5_1",
                                  "--backend", "nope", "--no-progress"])
    assert "unknown backend 'nope'" in err


def test_quantize_reads_the_metadata_once_and_sums_up_the_written_file(model, tmp_path, monkeypatch, capsys):
    """The input's header is parsed once (a vocabulary takes milliseconds every time); the closing
    line's size and bits per weight are the written file's."""
    from refquant.io import gguf
    f32, q = tmp_path / "f32.gguf", tmp_path / "q.gguf"
    assert main(["dequantize", str(model), str(f32), "--no-progress"]) == 0
    opened = []
    init = gguf.GGUFFile.__init__
    monkeypatch.setattr(gguf.GGUFFile, "__init__", lambda self, path: (opened.append(str(path)), init(self, path))[1])
    capsys.readouterr()
    assert main(["quantize", str(f32), str(q), "--type", "q4_0", "--no-progress"]) == 0
    assert opened == [str(f32)]
    monkeypatch.undo()
    with GGUFFile(q) as b, GGUFFile(f32) as a:
        bpw = 8 * sum(t.nbytes for t in b.tensors) / sum(t.n_elements for t in a.tensors)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{q.stat().st_size / 1048576:.2f} MiB, {bpw:.3f} bits per weight" in line, line


@pytest.mark.parametrize("out_type", ["F16", "BF16"])
def test_dequantize_to_half_types(model, tmp_path, out_type):
    out = tmp_path / "h.gguf"
    assert main(["dequantize", str(model), str(out), "--type", out_type.lower(), "--no-progress"]) == 0
    with GGUFFile(model) as a, GGUFFile(out) as b:
        x = a.dequantize("a.weight", refquant.dequantize)
        np.testing.assert_array_equal(np.asarray(b.raw("a.weight")), refquant.quantize(x, out_type))


def one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("refquant: error: ") and err.count("\n") == 1, err
    return err


def test_bad_files_give_one_line_and_status_2(model, tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(100))
    assert "bad magic" in one_line_error(capsys, ["inspect", str(bad)])
    bad.write_bytes(model.read_bytes()[:-100])
    assert "past the end of the file" in one_line_error(capsys, ["dequantize", str(bad), str(tmp_path / "o.gguf")])
    assert not (tmp_path / "o.gguf").exists()
    assert "unknown format 'Q9_9'" in one_line_error(capsys, ["quantize", str(model), str(tmp_path / "o.gguf"),
                                                              "--type", "Q9_9"])


def test_one_ggml_type_everywhere(model, tmp_path, ggml):
    """A ggml type that is no llama.cpp file type (here MXFP4) goes to every quantizable weight."""
    f32 = tmp_path / "f32.gguf"
    assert main(["dequantize", str(model), str(f32), "--no-progress"]) == 0
    out = tmp_path / "mx.gguf"
    assert main(["quantize", str(f32), str(out), "--type", "mxfp4", "--no-progress"]) == 0
    with GGUFFile(f32) as a, GGUFFile(out) as b:
        assert [t.type_name for t in b.tensors] == ["MXFP4", "F32"]
        np.testing.assert_array_equal(np.asarray(b.raw("a.weight")), ggml.quantize(a.dequantize("a.weight", refquant.dequantize), "MXFP4"))


def test_quantized_input_is_refused(model, tmp_path, capsys):
    err = one_line_error(capsys, ["quantize", str(model), str(tmp_path / "o.gguf"), "--type", "Q8_0"])
    assert "already quantized (tensor 'a.weight' is Q8_0)" in err
    assert not (tmp_path / "o.gguf").exists()


def test_interrupted_write_leaves_no_file(model, tmp_path, monkeypatch, capsys):
    f32 = tmp_path / "f32.gguf"
    main(["dequantize", str(model), str(f32), "--no-progress"])
    import refquant.cli as cli

    class Interrupting(cli.Progress):
        def __call__(self, item=None):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "Progress", Interrupting)
    out = tmp_path / "q.gguf"
    assert main(["quantize", str(f32), str(out), "--type", "Q4_0"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f32.gguf", "m.gguf"]


def test_module_entry_point_runs(model):
    r = subprocess.run([sys.executable, "-m", "refquant.cli", "inspect", str(model)], capture_output=True, text=True)
    assert r.returncode == 0 and "a.weight" in r.stdout
    r = subprocess.run([sys.executable, "-m", "refquant.cli", "inspect", str(model) + ".missing"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_console_script_collects_rarely_and_skips_the_exit_walk():
    """The `refquant` script (pyproject's entry point) is run(): one collector pass per million
    allocations, and everything frozen before the interpreter's final pass."""
    import tomllib
    from pathlib import Path
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["refquant"] == "refquant.cli:run"
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 1000, gc.get_threshold()[0]))\n"
             "sys.argv = ['refquant', 'formats']\n"
             "from refquant.cli import run\n"
             "run()\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "frozen True 1000000", r.stdout[-300:] + r.stderr


def test_formats_command(capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    assert any(l.split()[:4] == ["Q4_0", "ggml-legacy", "32", "18"] for l in out.splitlines())
    rows = {l.split()[0]: l.split()[1:4] for l in out.splitlines() if len(l.split()) > 4}
    assert rows["INT4"] == ["onnx", "2", "1"] and rows["FLOAT8E8M0_NEAREST"] == ["onnx", "1", "1"]
    assert rows["NVFP4_TORCHAO"] == ["torchao", "16", "9"]
