"""Every registered format has a spec page, and the page agrees with the registry."""
import re
from pathlib import Path

import pytest

import refquant
import refquant.registry

SPEC = Path(__file__).resolve().parent.parent / "spec"
FORMATS = refquant.formats()


def table_value(text: str, label: str):
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].lower().startswith(label):
            m = re.search(r"\d+(\.\d+)?", cells[1])
            return float(m.group(0)) if m else None
    return None


@pytest.mark.parametrize("rec", FORMATS, ids=[r["name"] for r in FORMATS])
def test_page_exists_and_agrees(rec):
    assert rec["spec_page"], f"{rec['name']} names no spec page"
    page = SPEC / rec["spec_page"]
    assert page.is_file(), f"{rec['name']}: {page} is missing"
    text = page.read_text()
    assert text.startswith(f"# {rec['name']}"), f"{page} must start with '# {rec['name']}'"
    assert table_value(text, "block size") == rec["block_size"], page
    assert table_value(text, "bytes per block") == rec["type_size"], page
    bpw = table_value(text, "bits per weight")
    assert bpw is not None and abs(bpw - rec["bits_per_weight"]) < 1e-3, page
    assert re.search(r"^## .*layout", text, re.I | re.M), f"{page} lacks a layout section"


def index_rows():
    rows = {}
    for line in (SPEC / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[5].startswith("[") and cells[2].isdigit():
            rows[cells[0]] = cells
    return rows


def test_index_lists_every_format_as_the_registry_has_it():
    rows = index_rows()
    for rec in FORMATS:
        assert rec["name"] in rows, f"spec/README.md has no row for {rec['name']}"
        name, family, block, size, bpw, link = rows[rec["name"]]
        assert (family, int(block), int(size)) == (rec["family"], rec["block_size"], rec["type_size"]), name
        assert abs(float(bpw) - rec["bits_per_weight"]) < 1e-3, name
        assert f"({rec['spec_page']})" in link, name


def test_index_rows_of_the_ggml_types_are_generated():
    """spec/README.md's ggml rows are the registry's (write them with `python tools/gen_spec_layouts.py`)."""
    from tools.gen_spec_layouts import updated_index
    text = (SPEC / "README.md").read_text()
    assert updated_index(text) == text, "spec/README.md: ggml index rows stale; run tools/gen_spec_layouts.py"


def test_no_orphan_pages():
    pages = {str(p.relative_to(SPEC)) for p in (SPEC / "ggml").glob("*.md")}
    named = {r["spec_page"] for r in FORMATS}
    topics = {"ggml/recipes.md", "ggml/dot.md", "ggml/search.md", "ggml/searches.md", "ggml/grids.md"}
    extra = pages - named - topics
    assert not extra, f"pages for no registered format: {sorted(extra)}"


@pytest.mark.parametrize("fmt", [f for f in refquant.registry.all_formats() if f.layout is not None],
                         ids=lambda f: f.name)
def test_page_field_table_is_the_declared_layout(fmt):
    """The field table on a block type's page is generated from its declared layout (write it with
    `python tools/gen_spec_layouts.py`)."""
    from refquant.ggml.layout import page_section
    text = (SPEC / fmt.spec_page).read_text()
    assert page_section(fmt.layout) in text, f"{fmt.spec_page}: field table missing or stale; run tools/gen_spec_layouts.py"
