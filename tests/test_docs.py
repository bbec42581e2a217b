"""What ships to users beside the code: the Python examples in README.md and the pages under
docs/ run as written, and the wheel carries the libraries' type information (PEP 561 markers)."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md")
                                     if "_hooks" not in p.parts)]


#: a page holding this comment is a tutorial whose Python blocks share one namespace, in order
SHARED = "<!-- examples: one session -->"


def blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


CASES = [(p, i, code) for p in PAGES for i, code in enumerate(blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page,i,code", CASES,
                         ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in CASES])
def test_example_runs(page, i, code, capsys):
    ns = {"__name__": "__doc_example__"}
    if SHARED in page.read_text():        # a tutorial: each block goes on from the ones before
        for j, before in enumerate(blocks(page)[:i]):
            exec(compile(before, f"{page.name}#{j}", "exec"), ns)
    exec(compile(code, f"{page.name}#{i}", "exec"), ns)


@pytest.mark.slow
def test_units_page_examples_report_what_they_print(capsys):
    resnet, removal = blocks(ROOT / "docs" / "units.md")[:2]
    ns: dict = {}
    exec(compile(resnet, "units.md", "exec"), ns)
    assert ns["report"].removed == {"conv1": 2, "layer3.0.conv1": 1}
    assert ns["graph"].group_of("layer2.1.conv2").members == [
        "layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"]
    assert len(ns["graph"].prunable) == 12
    assert ns["model"].layer1[2].conv2.weight.shape[0] == 14
    ns = {}
    exec(compile(removal, "units.md", "exec"), ns)
    net = ns["net"]
    assert ns["gap"] <= 1e-10
    assert tuple(net[0].weight.shape) == (6, 1, 3, 3)
    assert tuple(net[5].weight.shape) == (13, 150)
    assert ns["report"].removed == {"0": 2, "5": 3}


@pytest.mark.slow
def test_wheel_ships_the_type_markers(tmp_path):
    """``saliency/py.typed`` and ``pruners/py.typed`` are in the built wheel (setup.cfg's
    ``[options.package_data]``), so type checkers read the libraries' annotations."""
    pytest.importorskip("setuptools")
    for package in ("saliency", "pruners"):
        assert (ROOT / package / "py.typed").is_file(), package
    # build from a copy, so the working tree gets no build/ or egg-info folder
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("saliency", "pruners", "experiments"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-cache-dir", "-q", "-w", str(out), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    wheels = list(out.glob("saliency_pruning-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert {"saliency/py.typed", "pruners/py.typed"} <= names
    assert "saliency/__init__.py" in names and "pruners/__init__.py" in names
