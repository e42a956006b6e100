"""One format, one place: adding a ggml block type is its family module, its spec page (with its
generated material and golden vectors), its twin module(s) and its tests -- CONTRIBUTING's
"Adding a format". Held here for the two newest types, Q2_0 (type 42) and Q1_0 (type 41), by
reading every code file of the repository outside tests/ (Python by its syntax tree, docstrings
and comments aside; C/CUDA sources, build files and scripts with their comments stripped) for
the type's name in any case (`Q2_0`, `quantize_q2_0`, `Q2_0_D`): no list of types, table,
dispatch or kernel elsewhere names it, so nothing else had to change when it was added.

benchmarks/ is not read: a benchmark picks the types it times, and a new type need not be
timed."""
import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache",
             "node_modules", "tests", "benchmarks"}

# type -> the files whose code names it, each with the reason it may
WHERE = {
    "Q2_0": {
        "refquant/ggml/lowbit.py": "its family module: layout, row functions, vec_dot decoder, record "
                                   "(with llama-quant.cpp's fallback and token_embd types for it)",
        "backends/numba/ggml/lowbit.py": "its Numba twin module: kernels, tables, DECLARES",
    },
    "Q1_0": {
        "refquant/ggml/lowbit.py": "its family module",
        "backends/numba/ggml/lowbit.py": "its Numba twin module (quantize, dequantize)",
        "backends/numba/ggml/dot.py": "its Numba twin module (vec_dot)",
    },
}


def _python_code(text: str) -> str:
    """Every name and string of a module's syntax tree, docstrings aside (comments are not in it)."""
    tree = ast.parse(text)
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docs.add(id(first.value))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            out.append(node.value)
        elif isinstance(node, ast.Name):
            out.append(node.id)
        elif isinstance(node, ast.Attribute):
            out.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(node.name)
        elif isinstance(node, ast.alias):
            out += [node.name, node.asname or ""]
        elif isinstance(node, (ast.arg, ast.keyword)):
            out.append(node.arg or "")
    return "\n".join(out)


def _code(path: Path) -> str | None:
    name = path.name
    if name.endswith(".py"):
        return _python_code(path.read_text(encoding="utf-8"))
    if name.endswith((".cu", ".cuh", ".h", ".c", ".cc", ".cpp")):
        return re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(encoding="utf-8"), flags=re.S)
    if name == "Makefile" or name.endswith((".toml", ".cfg", ".sh", ".yml", ".yaml", ".ini")):
        return re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    return None


def _code_files():
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.endswith(".egg-info"))
        for f in sorted(files):
            p = Path(d) / f
            code = _code(p)
            if code is not None:
                yield p.relative_to(ROOT).as_posix(), code


@pytest.fixture(scope="module")
def code_files():
    return dict(_code_files())


def _naming(code_files, name):
    pat = re.compile(rf"(?i)(?<![a-z0-9]){re.escape(name)}(?![0-9])")
    return {p for p, code in code_files.items() if pat.search(code)}


@pytest.mark.parametrize("name", sorted(WHERE))
def test_a_type_is_named_only_in_its_own_places(code_files, name):
    assert _naming(code_files, name) == set(WHERE[name])


def test_the_reader_sees_code_and_not_prose(tmp_path):
    """A name in code counts (a string, an identifier); in a comment or a docstring it does not."""
    files = {"a.py": '"""Q2_0 in a docstring."""\n# Q2_0 in a comment\nX = 1\n',
             "b.py": 'TYPES = ["Q4_0", "Q2_0"]\n', "c.py": "def quantize_q2_0(x):\n    return x\n",
             "d.py": 'T = "TQ2_0"\n', "e.cu": "// Q2_0\nint x = RQ_Q2_0_QS;\n", "f.cu": "/* Q2_0 */ int y;\n"}
    code = {}
    for n, text in files.items():
        (tmp_path / n).write_text(text)
        code[n] = _code(tmp_path / n)
    assert _naming(code, "Q2_0") == {"b.py", "c.py", "e.cu"}
