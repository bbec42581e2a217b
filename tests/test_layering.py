"""The layers of the code base, enforced: the import contracts (import-linter, configured in
pyproject.toml) and no private name used across a package boundary.

Both checks are run on the real code and on a copy with one violation planted, so a check that
could not fail would fail here.
"""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("saliency", "pruners", "experiments")


# --------------------------------------------------------------------------- import contracts

def _lint(root: pathlib.Path) -> subprocess.CompletedProcess:
    """import-linter on the packages under ``root``, with the contracts of its pyproject.toml."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={"PATH": "", "PYTHONPATH": str(root)}, timeout=300)


def _copy_tree(tmp_path: pathlib.Path) -> pathlib.Path:
    dest = tmp_path / "repo"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_import_contracts_hold():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 kept, 0 broken" in out.stdout


LIBRARY = "saliency <- pruners <- experiments"
EXPERIMENTS = "experiments: harness <- studies | tools | bench <- catalog <- cli"
STUDIES = "no study imports another study"
ACYCLIC = "no import cycles between sibling modules"


@pytest.mark.parametrize("where, line, broken", [
    ("saliency/magnitude.py", "import pruners", {LIBRARY}),
    ("pruners/schedules.py", "from experiments.harness import atomic", {LIBRARY}),
    # inside experiments, a lower layer importing a higher one also closes a cycle of siblings,
    # and every study that uses the harness's stats now reaches the tri-state study indirectly
    ("experiments/harness/stats.py", "import experiments.studies.tristate.repro",
     {EXPERIMENTS, STUDIES, ACYCLIC}),
    ("experiments/bench/diagnose.py", "from experiments.tools import demo", {EXPERIMENTS}),
    ("experiments/studies/shrinknets/gamma.py", "from experiments.studies.tristate import repro",
     {STUDIES}),
    ("saliency/kernels.py", "import saliency.compare", {ACYCLIC}),
])
def test_a_planted_forbidden_import_breaks_its_contract(tmp_path, where, line, broken):
    repo = _copy_tree(tmp_path)
    target = repo / where
    target.write_text(target.read_text() + f"\n{line}  # planted by the test\n")
    out = _lint(repo)
    assert out.returncode == 1, out.stdout + out.stderr
    assert {ln.removesuffix(" BROKEN") for ln in out.stdout.splitlines()
            if ln.endswith(" BROKEN")} == broken, out.stdout


# --------------------------------------------------------------------------- private names

def package_unit(module: str) -> str:
    """The package a module belongs to for the private-name rule: ``saliency``, ``pruners``,
    ``experiments.harness``, ``experiments.studies.<study>``, ``experiments.tools``,
    ``experiments.bench`` (its modules and subpackages), or ``experiments`` (cli, catalog)."""
    parts = module.split(".")
    if parts[0] != "experiments" or len(parts) < 2:
        return parts[0]
    if parts[1] == "studies" and len(parts) > 2:
        return ".".join(parts[:3])
    if parts[1] in ("harness", "tools", "bench", "studies"):
        return ".".join(parts[:2])
    return "experiments"


def _module_name(path: pathlib.Path, root: pathlib.Path) -> tuple[str, bool]:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def _absolute(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_crossings(root: pathlib.Path, packages=PACKAGES) -> list[str]:
    """Every use of a private name (``_x``) of another package unit (:func:`package_unit`):
    ``from pkg.mod import _x``, a private module in an import, and ``mod._x`` on a module
    imported from another unit. Returns ``"file:line: what"`` strings."""
    found = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            module, is_pkg = _module_name(path, root)
            unit = package_unit(module)
            tree = ast.parse(path.read_text(), str(path))
            foreign_modules: dict[str, str] = {}  # local name -> module of another unit
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    src = _absolute(module, is_pkg, node.level, node.module)
                    if not src.split(".")[0] in packages or package_unit(src) == unit:
                        continue
                    if any(_private(p) for p in src.split(".")):
                        found.append(f"{path.relative_to(root)}:{node.lineno}: "
                                     f"private module {src}")
                    for alias in node.names:
                        if _private(alias.name):
                            found.append(f"{path.relative_to(root)}:{node.lineno}: "
                                         f"{src}.{alias.name}")
                        else:
                            foreign_modules[alias.asname or alias.name] = f"{src}.{alias.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.split(".")[0] not in packages:
                            continue
                        if package_unit(alias.name) == unit:
                            continue
                        if any(_private(p) for p in alias.name.split(".")):
                            found.append(f"{path.relative_to(root)}:{node.lineno}: private module "
                                         f"{alias.name}")
                        foreign_modules[alias.asname or alias.name.split(".")[0]] = alias.name
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and _private(node.attr)
                        and isinstance(node.value, ast.Name) and node.value.id in foreign_modules):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: "
                                 f"{foreign_modules[node.value.id]}.{node.attr}")
    return found


def test_package_units():
    assert package_unit("saliency.graph") == "saliency"
    assert package_unit("experiments.harness.datasets.idx") == "experiments.harness"
    assert package_unit("experiments.studies.shrinknets.gamma") == "experiments.studies.shrinknets"
    assert package_unit("experiments.bench.peers.setting") == "experiments.bench"
    assert package_unit("experiments.cli") == "experiments"


def test_no_private_name_crosses_a_package_boundary():
    assert private_crossings(ROOT) == []


def test_the_private_name_check_finds_each_kind_of_crossing(tmp_path):
    files = {
        "saliency/__init__.py": "",
        "saliency/graph.py": "def _helper():\n    return 1\n\n\ndef public():\n    return 2\n",
        "pruners/__init__.py": "",
        "pruners/ok.py": "from saliency.graph import public\n",
        "pruners/bad_from.py": "from saliency.graph import public, _helper\n",
        "pruners/bad_attr.py": "from saliency import graph\n\nx = graph._helper()\n",
        "pruners/bad_import.py": "import saliency.graph as g\n\ny = g._helper\n",
        "pruners/inside.py": "from ._impl import thing\n",
        "pruners/_impl.py": "thing = 1\n",
        "experiments/__init__.py": "",
        "experiments/harness/__init__.py": "",
        "experiments/harness/a.py": "from pruners._impl import thing\n",
        "experiments/studies/__init__.py": "",
        "experiments/studies/x/__init__.py": "",
        "experiments/studies/x/m.py": "def _p():\n    pass\n",
        "experiments/studies/x/n.py": "from experiments.studies.x.m import _p\n",
        "experiments/studies/y/__init__.py": "",
        "experiments/studies/y/k.py": "from experiments.studies.x import m\n\nm._p()\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    assert sorted(private_crossings(tmp_path)) == sorted([
        "pruners/bad_from.py:1: saliency.graph._helper",
        "pruners/bad_attr.py:3: saliency.graph._helper",
        "pruners/bad_import.py:3: saliency.graph._helper",
        "experiments/harness/a.py:1: private module pruners._impl",
        "experiments/studies/y/k.py:3: experiments.studies.x.m._p",
    ])


# --------------------------------------------------------------------------- library tests

#: the tests of the harness, the studies, the tools, the benchmarks and the docs: they may import
#: ``experiments``. Every other test file tests the library and must not, directly or through a
#: helper module of tests/ (the small models it needs are in tests/zoo.py).
HARNESS_TESTS = {
    "test_attack_repro.py", "test_bench_diagnose.py", "test_bench_inference.py",
    "test_bench_peers.py", "test_bench_peers_seeds.py", "test_bench_scorers.py",
    "test_bench_shrinknets.py",
    "test_cli.py", "test_datasets.py", "test_demo.py", "test_diagnose.py", "test_docs.py",
    "test_export_zoo.py", "test_hf_harness.py",
    "test_group_sparsity_repro.py", "test_harness.py", "test_harness_library.py",
    "test_layering.py", "test_pruning_repro.py", "test_resnet_study.py", "test_saliency_repro.py",
    "test_transformer_zoo.py",
    "test_shrinknets_gamma.py", "test_shrinknets_regression.py", "test_shrinknets_repro.py",
    "test_site.py", "test_sweep.py", "test_transformer_study.py", "test_tristate_repro.py",
    "test_bench_criteria.py",
    "test_width_methods.py",
}


def _imports(path: pathlib.Path) -> set[str]:
    """Top-level names of the modules a file imports (anywhere in it)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def reaches_experiments(path: pathlib.Path, seen: set | None = None) -> bool:
    """Whether a test file imports ``experiments``, directly or through tests/ helper modules."""
    seen = set() if seen is None else seen
    seen.add(path.name)
    names = _imports(path)
    if "experiments" in names:
        return True
    helpers = [path.parent / f"{n}.py" for n in names]
    return any(h.exists() and h.name not in seen and reaches_experiments(h, seen)
               for h in helpers)


def test_library_tests_do_not_import_experiments():
    tests = ROOT / "tests"
    assert HARNESS_TESTS <= {p.name for p in tests.glob("test_*.py")}  # the list is not stale
    offenders = [p.name for p in sorted(tests.glob("test_*.py"))
                 if p.name not in HARNESS_TESTS and reaches_experiments(p)]
    assert offenders == []


def test_the_library_test_check_follows_helper_modules(tmp_path):
    (tmp_path / "helper.py").write_text("from experiments.harness import models\n")
    (tmp_path / "test_a.py").write_text("import torch\nfrom helper import models\n")
    (tmp_path / "test_b.py").write_text("def f():\n    import experiments.cli\n")
    (tmp_path / "test_c.py").write_text("import saliency\nimport zoo\n")
    assert [reaches_experiments(tmp_path / f"test_{c}.py") for c in "abc"] == [True, True, False]
