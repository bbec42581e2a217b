"""The documentation site: the API reference covers every public name, every notebook runs top
to bottom and is stored without outputs, the pages stand alone (no internal paths or work items),
every ``experiments`` name they mention exists, and ``mkdocs build --strict`` passes, with pydantic
importable and without it.

The notebooks are executed once per session (into a temporary cache keyed by their SHA-256) and
both strict builds reuse those executions, so nothing runs twice. Executing the notebooks and
building the site are ``slow``; ``pytest -m "not slow"`` runs only the quick checks.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((DOCS / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(DOCS / "_hooks"))

import docs_site  # noqa: E402  (docs/_hooks, on the path above)


@pytest.fixture(scope="session")
def executed_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("executed-notebooks")


# --------------------------------------------------------------------------- API reference

def test_reference_documents_every_public_name():
    ids = docs_site.reference_identifiers(DOCS / "api")
    assert docs_site.missing_from_reference(ids) == []
    # and every page of the reference is in the navigation
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (DOCS / "api").glob("*.md"):
        assert f"api/{page.name}" in nav, page.name


def test_reference_check_reports_what_is_left_out():
    ids = docs_site.reference_identifiers(DOCS / "api")
    assert ids["saliency.MRS"] == "saliency.md"
    without = {k: v for k, v in ids.items()
               if k not in ("saliency.MRS", "pruners.group_sparsity.GROUPINGS")}
    # a name documented under its defining submodule counts for the package: GROUPINGS is
    # re-exported by pruners and only documented as pruners.group_sparsity.GROUPINGS
    assert "pruners.GROUPINGS" not in ids
    assert docs_site.missing_from_reference(without) == [
        "saliency.MRS", "pruners.GROUPINGS", "pruners.group_sparsity.GROUPINGS"]
    with pytest.raises(ValueError, match="saliency.NoSuchScorer"):
        docs_site.missing_from_reference({**ids, "saliency.NoSuchScorer": "x.md"})


def test_reference_check_does_not_match_constants_by_value(tmp_path, monkeypatch):
    # two equal small ints are one object in CPython: a constant counts only under its own name
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("A = 3\nB = 3\n__all__ = ['A', 'B']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert docs_site.missing_from_reference({"fakepkg.A": "p.md"}, packages=("fakepkg",)) \
        == ["fakepkg.B"]


# --------------------------------------------------------------------------- notebooks

def test_there_are_the_four_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["compare_saliency", "dead_units", "pruning_loop",
                                           "shrinknets"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, path.name
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
            f"{path.name}: code cell {i} has stored outputs; clear them before committing"


# what each executed notebook must show: (figures at least, a text its output contains)
EXPECTED = {
    "compare_saliency": (3, "mean loss change for fractions <= 0.5"),
    "dead_units": (1, "exactly removable"),
    "pruning_loop": (2, "of the weights are zero"),
    "shrinknets": (1, "ran in"),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, executed_cache):
    nb = docs_site.executed(path, cache_dir=executed_cache)
    kinds = [o.get("output_type") for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", [])]
    assert "error" not in kinds
    markdown, images = docs_site.render(nb, path.stem)
    figures, text = EXPECTED[path.stem]
    assert len(images) >= figures, (path.stem, sorted(images))
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in images.values())
    printed = "".join(docs_site._text(o.get("text", "")) for c in nb.cells
                      if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "stream")
    assert text.lower() in printed.lower(), path.stem      # what the code printed, not its source
    assert markdown.startswith("# "), "the notebook's title is the page title"
    print(f"{path.stem}: {docs_site.timings.get(path.stem, 0.0):.1f} s")


def test_render_fails_on_an_executed_error():
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 / 0")
    cell.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="",
                                           traceback=[])]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    with pytest.raises(RuntimeError, match="cell 1 raised ZeroDivisionError"):
        docs_site.render(nb, "t")


# --------------------------------------------------------------------------- the site

#: runs ``mkdocs`` (its arguments follow) with pydantic's import refused, as on a machine without it:
#: mkdocstrings-python then skips validating its options, which it does whenever pydantic imports
WITHOUT_PYDANTIC = """
import sys

class RefusePydantic:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pydantic", "pydantic_core"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, RefusePydantic())
try:
    import pydantic  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("pydantic was not blocked")
from mkdocs.__main__ import cli

sys.argv[0] = "mkdocs"
cli()
"""


@pytest.mark.slow
@pytest.mark.parametrize("pydantic", ["with-pydantic", "without-pydantic"])
def test_site_builds_strictly(pydantic, tmp_path, executed_cache):
    pytest.importorskip("mkdocs")
    if pydantic == "with-pydantic":
        # mkdocstrings-python validates its handler options (mkdocs.yml) only when pydantic imports
        pytest.importorskip("pydantic")
        command = [sys.executable, "-m", "mkdocs"]
    else:
        command = [sys.executable, "-c", WITHOUT_PYDANTIC]
    for path in NOTEBOOKS:                     # executed once, by the tests above when they ran
        docs_site.executed(path, cache_dir=executed_cache)
    site = tmp_path / "site"
    env = {**os.environ, docs_site.CACHE_ENV: str(executed_cache), "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([*command, "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    assert not re.search(r"executed \w+\.ipynb in", run.stderr), "a cached notebook ran again"
    page = (site / "notebooks" / "compare_saliency" / "index.html").read_text()
    assert page.count("<img") >= 3 and "compare_saliency.ipynb" in page
    assert (site / "notebooks" / "compare_saliency.ipynb").exists()     # the download
    api = (site / "api" / "saliency" / "index.html").read_text()
    assert 'id="saliency.MRP"' in api and "mean replacement" in api.lower()
    # the griffe extension (mkdocs.yml) ran: the docstrings' Sphinx roles became code and links
    assert ":func:`" not in api and ":class:`" not in api
    results = (site / "results" / "index.html").read_text()
    assert "Torch-Pruning" in results or "torch_pruning" in results.lower()
    for page in RESULT_PAGES:
        assert (site / "results" / page / "index.html").exists(), page
    assert (site / "references" / "index.html").exists()


# --------------------------------------------------------------------------- pages stand alone

#: every page of the site, the README and the notebooks (their text, cells included)
TEXTS = [ROOT / "README.md", ROOT / "mkdocs.yml", *sorted(DOCS.rglob("*.md")), *NOTEBOOKS]
RESULT_PAGES = ["saliency", "pruning", "shrinknets", "group_sparsity", "tristate", "dead_units",
                "width_methods", "peers", "transformers", "criteria"]


def test_results_pages_are_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert "results/index.md" in nav and "references.md" in nav
    for page in RESULT_PAGES:
        assert (DOCS / "results" / f"{page}.md").exists(), page
        assert f"results/{page}.md" in nav, page


#: a path into the project's internal folder of source documents, or a work item by number
INTERNAL = re.compile(r"shared/seeds|\b[Ii]ssues? #?\d+|\b[Ii]tems? \d+|the issue\b|issue's",
                      re.I)
#: links to other projects' issue trackers are fine
TRACKER = re.compile(r"\[[^\]]*\]\(https://github\.com/[^)]+/issues/\d+\)")


@pytest.mark.parametrize("path", TEXTS, ids=[str(p.relative_to(ROOT)) for p in TEXTS])
def test_page_stands_alone(path):
    text = TRACKER.sub("", path.read_text())
    found = [m.group(0) for m in INTERNAL.finditer(text)]
    assert not found, f"{path.name} refers to internal documents or work items: {found}"


#: ``experiments.a.b.Name`` in prose or code, and ``experiments/a/b.py`` paths
DOTTED = re.compile(r"(?<![\w./-])experiments(?:\.[A-Za-z_]\w*)+")
FILE = re.compile(r"(?<![\w./-])experiments/[\w/]+\.py\b")


def _resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_experiments_names_in_the_docs_exist():
    names, files = set(), set()
    for path in TEXTS:
        text = path.read_text()
        names.update(DOTTED.findall(text))
        files.update(FILE.findall(text))
    assert names and files
    names = {n for n in names
             if n.rsplit(".", 1)[-1] not in ("md", "py", "ipynb")    # file names, not modules
             and "NAME" not in n.split(".")}                          # a placeholder
    missing = sorted(n for n in names if not _resolves(n))
    assert missing == [], f"the docs name experiments objects that do not exist: {missing}"
    gone = sorted(f for f in files if not (ROOT / f).exists())
    assert gone == [], f"the docs name files that do not exist: {gone}"
