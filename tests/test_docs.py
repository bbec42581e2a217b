"""The Python examples in README.md and docs/*.md run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


#: a page holding this comment is a tutorial whose Python blocks share one namespace, in order
SHARED = "<!-- examples: one session -->"


def blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


CASES = [(p, i, code) for p in PAGES for i, code in enumerate(blocks(p))]


@pytest.mark.parametrize("page,i,code", CASES,
                         ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in CASES])
def test_example_runs(page, i, code, capsys):
    ns = {"__name__": "__doc_example__"}
    if SHARED in page.read_text():        # a tutorial: each block goes on from the ones before
        for j, before in enumerate(blocks(page)[:i]):
            exec(compile(before, f"{page.name}#{j}", "exec"), ns)
    exec(compile(code, f"{page.name}#{i}", "exec"), ns)


def test_units_page_example_reports_exactness(capsys):
    code = blocks(ROOT / "docs" / "units.md")[0]
    ns: dict = {}
    exec(compile(code, "units.md", "exec"), ns)
    net = ns["net"]
    assert ns["gap"] <= 1e-10
    assert tuple(net[0].weight.shape) == (6, 1, 3, 3)
    assert tuple(net[5].weight.shape) == (13, 150)
    assert ns["report"].removed == {"0": 2, "5": 3}
