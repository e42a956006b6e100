"""Write each ggml block type's field table, generated from its declared layout, into its spec page,
and spec/README.md's index of the ggml block types, generated from the registry.

    python tools/gen_spec_layouts.py          rewrite the pages whose table is missing or stale
    python tools/gen_spec_layouts.py --check  exit 1 naming the stale pages (tests/test_spec_pages.py
                                              makes the same check)

The table goes between the markers of refquant.ggml.layout.page_section; a page without them gets
it right under its layout heading (the first "## ... layout" line). The index's rows are the lines
under the header of spec/README.md's "## GGUF block types (ggml)" table, up to the blank line.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from refquant.ggml.layout import PAGE_BEGIN, PAGE_END, page_section
from refquant.registry import all_formats

SPEC = Path(__file__).resolve().parent.parent / "spec"


def updated(text: str, section: str) -> str:
    if PAGE_BEGIN in text:
        start = text.index(PAGE_BEGIN)
        end = text.index(PAGE_END, start) + len(PAGE_END)
        return text[:start] + section + text[end:]
    m = re.search(r"^## .*layout.*\n", text, re.I | re.M)
    if m is None:
        raise SystemExit(f"no layout heading to put the field table under")
    return text[:m.end()] + "\n" + section + "\n" + text[m.end():]


INDEX_HEADING = "## GGUF block types (ggml)"


def ggml_index_rows() -> str:
    """spec/README.md's rows for the ggml block types, in the registry's order."""
    return "\n".join(f"| {f.name} | {f.family} | {f.block_size} | {f.type_size} | {f.bits_per_weight:g} | "
                     f"[{f.spec_page}]({f.spec_page}) |"
                     for f in all_formats() if f.family.startswith("ggml"))


def updated_index(text: str) -> str:
    head = text.index(INDEX_HEADING)
    start = text.index("|---", head)
    start = text.index("\n", start) + 1
    end = text.index("\n\n", start)
    return text[:start] + ggml_index_rows() + text[end:]


def main(check: bool) -> int:
    stale = []
    index = SPEC / "README.md"
    text = index.read_text()
    new = updated_index(text)
    if new != text:
        stale.append(str(index))
        if not check:
            index.write_text(new)
    for fmt in all_formats():
        if fmt.layout is None or fmt.spec_page is None:
            continue
        page = SPEC / fmt.spec_page
        text = page.read_text()
        new = updated(text, page_section(fmt.layout))
        if new != text:
            stale.append(str(page))
            if not check:
                page.write_text(new)
    for p in stale:
        print(("stale: " if check else "wrote: ") + p)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
