"""transformers' own GPTQ and AWQ loaders (transformers 5.24 + optimum 2.3.0 + GPTQModel 7.7.0),
on the CPU, in a child process.

transformers 5 loads GPTQ checkpoints through optimum's GPTQQuantizer and GPTQModel's kernels, and
AWQ checkpoints through GPTQModel's kernels (AutoAWQ is no longer used). GPTQModel 7.7.0 requires
torch >= 2.14.1 while the test extra pins torch 2.13.0 (CPU), so it cannot be a dependency of the
test extra: the Makefile installs it, optimum and GPTQModel's import-time dependencies with
`pip install --no-deps --target .venv/gptqmodel-nodeps` (DIR). The parts used here run on torch
2.13. Importing GPTQModel patches transformers, safetensors and triton and sets environment
variables, so it runs in a child process that this module starts, never in the tests' process.

`load(jobs)` runs one child for a list of jobs; each job loads one checkpoint with
`AutoModel*.from_pretrained(dir, quantization_config=GPTQConfig|AwqConfig(bits, backend=...))`
(the checkpoint's own quantization_config is used; `backend` is a loading attribute that picks
GPTQModel's kernel: `gptq_torch` / `torch_awq`, the plain torch CPU kernels, instead of the AVX512
kernel that `auto` picks on this CPU and that compiles a C++ extension first), then reads back
every quantized module's weight as the loader dequantizes it (TorchLinear.dequantize_weight for
GPTQ, AwqTorchLinear's dequantize_gemm for AWQ) and the logits of a fixed input. The child runs
with TORCHDYNAMO_DISABLE=1: GPTQModel wraps the torch kernel's dequantization in torch.compile,
which then runs the same code eagerly (the compile takes minutes on 2 cores).

A job may name `defuse` (a model_type): GPTQModel's own loader calls
`defuser.replace_fused_blocks(model_type)` before it builds a model, so that a mixture of experts
is built from one Linear per expert (transformers 5 fuses Mixtral's experts into 3-D parameters,
which its GPTQ/AWQ integrations never convert), and `key_mapping` (from_pretrained's documented
renaming of checkpoint keys).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

VERSION = "7.7.0"
DIR = Path(sys.prefix) / "gptqmodel-nodeps"
IDS = [[1, 2, 3, 4, 5]]

_WORKER = r"""
import json, sys, traceback
sys.path.append(sys.argv[1])
jobs = json.loads(open(sys.argv[2]).read())
import numpy as np, torch
import transformers
from transformers import AwqConfig, GPTQConfig
import gptqmodel, optimum.version
for job in jobs:
    rec = {"gptqmodel": gptqmodel.__version__, "optimum": optimum.version.__version__,
           "transformers": transformers.__version__, "file": gptqmodel.__file__}
    try:
        if job.get("defuse"):
            import defuser
            rec["defused"] = bool(defuser.replace_fused_blocks(job["defuse"]))
        cls = getattr(transformers, job["cls"])
        qc = (GPTQConfig if job["method"] == "gptq" else AwqConfig)(bits=job["bits"], backend=job["backend"])
        kw = {"key_mapping": job["key_mapping"]} if job.get("key_mapping") else {}
        m, info = cls.from_pretrained(job["dir"], dtype=torch.float16, quantization_config=qc,
                                      output_loading_info=True, **kw)
        m.eval()
        rec["missing"] = sorted(info["missing_keys"])
        rec["unexpected"] = sorted(info["unexpected_keys"])
        arrays, kinds = {}, {}
        with torch.no_grad():
            for name, mod in m.named_modules():
                if not hasattr(mod, "qweight"):
                    continue
                kinds[name] = type(mod).__name__
                if job["method"] == "gptq":
                    w = mod.dequantize_weight()
                else:
                    w = mod._dequantize_weight_for_inference(torch.zeros(1, mod.in_features), dtype=torch.float16)
                arrays["w:" + name] = w.T.contiguous().numpy()
            out = m(torch.tensor(job["ids"]))
            arrays["logits"] = (out.logits if hasattr(out, "logits") else out[0]).float().numpy()
        rec["kinds"] = kinds
        np.savez(job["out"], **arrays)
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["traceback"] = traceback.format_exc()
    with open(job["out"] + ".json", "w") as f:
        json.dump(rec, f)
"""


def installed() -> bool:
    return (DIR / "gptqmodel").is_dir() and (DIR / "optimum").is_dir()


def load(jobs: list, work: Path, timeout: int = 900) -> list:
    """Run `jobs` (dicts: dir, cls, method "gptq"|"awq", bits, backend, optional defuse and
    key_mapping) in one child process; returns one dict a job: the child's record (versions,
    missing/unexpected keys, each quantized module's class in `kinds`, or `error`) with `weights`
    (module -> the loader's dequantized weight, (out, in) float16) and `logits` (float32)."""
    if not installed():
        raise RuntimeError(f"GPTQModel {VERSION} and optimum are not installed in {DIR}: run make install")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    full = []
    for i, j in enumerate(jobs):
        full.append(dict(j, dir=str(j["dir"]), ids=j.get("ids", IDS), out=str(work / f"job{i}")))
    (work / "jobs.json").write_text(json.dumps(full))
    env = dict(os.environ, PYTHONNOUSERSITE="1", TORCHDYNAMO_DISABLE="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", _WORKER, str(DIR), str(work / "jobs.json")], env=env,
                       capture_output=True, text=True, timeout=timeout)
    out = []
    for j in full:
        rec_path = Path(j["out"] + ".json")
        if not rec_path.exists():
            raise RuntimeError(f"the GPTQModel child process ended (exit status {r.returncode}):\n{r.stderr[-4000:]}")
        rec = json.loads(rec_path.read_text())
        if rec["gptqmodel"] != VERSION or not rec["file"].startswith(str(DIR)):
            raise RuntimeError(f"the child imported GPTQModel {rec['gptqmodel']} from {rec['file']}, not {VERSION} "
                               f"from {DIR}")
        if "error" not in rec:
            with np.load(j["out"] + ".npz") as z:
                rec["weights"] = {k[2:]: z[k] for k in z.files if k.startswith("w:")}
                rec["logits"] = z["logits"]
        out.append(rec)
    return out
