"""The import graph points down only, and the library ships only the library.

    command line (refquant.cli)
      -> pipelines (refquant.pipelines: recipes, conversion, checkpoints, the quality table)
        -> the reference forward (refquant.model), the conformance kit (refquant.conformance),
           attention on a quantized KV cache (refquant.kvcache)
          -> dispatch (refquant, refquant.backend, refquant_backends)
            -> formats and byte I/O (registry, ggml/, minifloat, mx, affine, bnb/, layouts/,
               algorithms/, api, io/, ...) -> numerics (refquant.numerics, refquant.errors)

Read from the source (every import statement, those inside functions too), so a lazy import
cannot hide an upward edge. tools/ (oracles, model fixtures, demo) is outside the package and
nothing in it is imported by the library.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"refquant": ROOT / "refquant", "refquant_backends": ROOT / "backends"}

# layer of a module, by the longest matching prefix; higher layers may import lower ones
LAYERS = {
    "refquant.cli": 5,
    "refquant.pipelines": 4,
    "refquant.model": 3,
    "refquant.conformance": 3,
    "refquant.kvcache": 3,          # attention on a quantized cache: calls the public quantize
    "refquant": 2,                  # the package's __init__ only: the public functions, over dispatch
    "refquant.backend": 2,
    "refquant_backends": 2,
}
FORMATS = 0                         # every other refquant module (io/ included)


def modules():
    for top, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [top] + list(rel.parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            yield ".".join(parts), path, is_pkg


MODULES = {name for name, _, _ in modules()}


def imports(name: str, path: Path, is_pkg: bool) -> set[str]:
    """Every module name the file imports: `from X import y` gives X.y where that is a module
    of the project, X otherwise."""
    package = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
    return out


def layer(mod: str):
    """The layer of a module of the project, None for anything else (numpy, gguf, ...)."""
    if mod == "backends" or mod.startswith("backends."):
        return "backends"                     # the folder's name: never importable as such
    if mod == "tools" or mod.startswith("tools."):
        return "tools"
    if not (mod == "refquant" or mod.startswith(("refquant.", "refquant_backends"))):
        return None
    best = max((p for p in LAYERS if mod == p or (p != "refquant" and mod.startswith(p + "."))), key=len,
               default=None)
    return FORMATS if best is None else LAYERS[best]


EDGES = [(name, path, imp) for name, path, is_pkg in modules() for imp in sorted(imports(name, path, is_pkg))]


def test_the_graph_was_read():
    names = {n for n, _, _ in EDGES}
    assert {"refquant.io.gguf", "refquant.pipelines.recipes", "refquant.cli", "refquant_backends.numba"} <= names
    assert ("refquant.pipelines.recipes", "refquant.io.gguf") in {(n, i) for n, _, i in EDGES}


@pytest.mark.parametrize("top", ["tools", "backends"])
def test_library_never_imports(top):
    """tools/ (oracles, real-model fixtures, demo) stays outside; the backends are imported by
    their installed name, refquant_backends."""
    bad = [f"{name} imports {imp}" for name, _, imp in EDGES if layer(imp) == top]
    assert not bad, bad


def test_imports_point_down():
    bad = []
    for name, _, imp in EDGES:
        to = layer(imp)
        if to is None or to in ("tools", "backends"):
            continue
        if to > layer(name):
            bad.append(f"{name} (layer {layer(name)}) imports {imp} (layer {to})")
    assert not bad, "\n".join(bad)


def test_io_takes_row_functions():
    """io/ is byte I/O: no dispatch, no backend, no pipeline, no model (it is handed row functions)."""
    bad = [f"{name} imports {imp}" for name, _, imp in EDGES
           if name.startswith("refquant.io") and layer(imp) not in (None, FORMATS)]
    assert not bad, bad


# names of modules `import refquant` and a quantize must never load
NEVER = ("tools", "refquant.oracles", "refquant.models", "refquant.demo", "refquant.pipelines", "refquant.cli",
         "refquant.model", "backends", "torch", "llama_cpp", "ggml")


def test_import_and_quantize_load_only_the_library():
    """In a fresh interpreter: import refquant, quantize and dequantize a row: none of the oracles,
    fixtures, demo (or their heavy imports), pipelines or command line is loaded."""
    code = ("import sys, numpy as np, refquant\n"
            "x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)\n"
            "refquant.dequantize(refquant.quantize(x, 'Q4_K'), 'Q4_K')\n"
            f"never = {NEVER!r}\n"
            "print('\\n'.join(m for m in sys.modules if any(m == n or m.startswith(n + '.') for n in never)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"loaded: {r.stdout.split()}"


def test_backends_install_under_their_own_name():
    """backends/ installs as refquant_backends (setup.py), not as a generic top-level `backends`;
    the entry-point names users type stay `numba` and `cupy`."""
    import tomllib
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["refquant.backends"]
    assert eps == {"numba": "refquant_backends.numba:NumbaBackend", "cupy": "refquant_backends.cupy:CupyBackend"}
    from importlib.metadata import entry_points
    installed = {ep.name: ep.value for ep in entry_points(group="refquant.backends")}
    assert installed == eps, "the installed entry points are stale: pip install --no-deps -e ."
