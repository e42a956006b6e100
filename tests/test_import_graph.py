"""The library's imports run one way: no module of refquant imports a module that imports it back
(counting the imports inside functions too, which run later but tie the modules just the same); `refquant.format` (the format record) imports nothing; format modules export
their records and never import the registry that reads them."""
import ast
from pathlib import Path

import pytest

from refquant.registry import FORMAT_MODULES

ROOT = Path(__file__).resolve().parent.parent / "refquant"


def _module_name(path: Path) -> str:
    parts = ("refquant",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The refquant modules `name` imports, anywhere in it."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "refquant")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "refquant":
                continue
            for a in node.names:   # `from . import grids` names a module
                out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
    out.discard(name)
    return {m for m in out if m in MODULES}


GRAPH = {name: _imports(name) for name in MODULES}


def test_no_import_circle():
    state, stack = {}, []

    def walk(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == "open":
                circle = stack[stack.index(n):] + [n]
                pytest.fail("import circle: " + " -> ".join(circle))
            if n not in state:
                walk(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            walk(m)


def test_the_format_record_imports_nothing():
    tree = ast.parse(MODULES["refquant.format"].read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    assert not imports, [ast.dump(n) for n in imports]


@pytest.mark.parametrize("module", FORMAT_MODULES)
def test_format_modules_export_records_and_do_not_import_the_registry(module):
    name = f"refquant.{module}"
    tree = ast.parse(MODULES[name].read_text())
    assert "refquant.registry" not in GRAPH[name]
    lazy = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.module.endswith("registry")]
    assert not lazy, f"{name} imports the registry"
    assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "RECORDS" for t in n.targets)
               for n in tree.body), f"{name} exports no RECORDS"
