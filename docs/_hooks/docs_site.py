"""mkdocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

Notebooks: Every ``docs/notebooks/NAME.ipynb`` is executed top to bottom with nbclient (in a
  fresh temporary folder, on the Python running mkdocs) and rendered as the page
  ``notebooks/NAME.md``: its Markdown cells, its code, and what the code printed and plotted (each
  figure a PNG beside the page). The stored notebook has no outputs; the site shows a real run. A
  cell that raises fails the build. The raw notebook is published beside the page for download.
  An executed copy is reused when its source has not changed: in memory (``mkdocs serve``
  rebuilds), and in the folder ``$SALIENCY_DOCS_EXECUTED`` when set, keyed by the SHA-256 of the
  notebook and of the library's Python sources, which is how the test suite builds the site without running every notebook twice.

API reference: Every public name (``__all__``) of ``saliency`` and ``pruners`` must be rendered by a
  ``::: identifier`` directive of ``docs/api/*.md`` that resolves to the same object (under the
  package or under the submodule that defines it); :func:`missing_from_reference` lists the ones
  that are not, and the build warns for each, which fails a strict build.

(The docstrings' Sphinx roles are handled by the griffe extension ``griffe_roles.py`` beside this.)

``tests/test_site.py`` imports :func:`executed` and :func:`render` from here.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import pathlib
import re
import tempfile
import time

log = logging.getLogger("mkdocs.hooks.site")

NOTEBOOK_DIR = "notebooks"
CACHE_ENV = "SALIENCY_DOCS_EXECUTED"
TIMEOUT = 600                   # seconds per cell: a hung cell fails the build instead of hanging
_memory: dict[str, object] = {}  # sha256 -> executed notebook, for `mkdocs serve` rebuilds
timings: dict[str, float] = {}   # notebook name -> seconds of its last execution in this process


# --------------------------------------------------------------------------- execution

def _kernel_manager_class():
    """A kernel manager whose ``python3`` kernel is this very interpreter.

    Not whatever kernelspec named ``python3`` is installed elsewhere (a user's, the system's):
    with no kernel folders, only the native spec is left, which ipykernel resolves to
    ``sys.executable``. nbclient creates it, so nbclient also shuts the kernel down.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ThisPythonKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _no_kernel_dirs(self):
            return KernelSpecManager(kernel_dirs=[])

    return ThisPythonKernelManager


def execute(path: str | os.PathLike, workdir: str | os.PathLike | None = None):
    """Run the notebook at ``path`` top to bottom; return the executed notebook.

    Cells run in ``workdir`` (a fresh temporary folder by default, removed afterwards), so files a
    notebook writes never land in the repository. Raises ``nbclient.exceptions.CellExecutionError``
    naming the cell when one raises.
    """
    import nbformat
    from nbclient import NotebookClient

    path = pathlib.Path(path)
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix=f"nb-{path.stem}-") as tmp:
        cwd = pathlib.Path(workdir) if workdir is not None else pathlib.Path(tmp)
        client = NotebookClient(nb, kernel_manager_class=_kernel_manager_class(),
                                kernel_name="python3", timeout=TIMEOUT,
                                resources={"metadata": {"path": str(cwd)}})
        start = time.perf_counter()
        client.execute()
        timings[path.stem] = time.perf_counter() - start
    log.info("executed %s in %.1f s", path.name, timings[path.stem])
    return nb


def _code_digest() -> bytes:
    """SHA-256 over the Python sources of the packages a notebook imports, so a change of the
    library re-executes every notebook instead of showing outputs it no longer produces."""
    root = pathlib.Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for package in ("saliency", "pruners", "experiments"):
        for file in sorted((root / package).rglob("*.py")):
            h.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return h.digest()


def executed(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """The executed notebook of ``path``, from a cache when its source is unchanged.

    ``cache_dir`` (default ``$SALIENCY_DOCS_EXECUTED``, if set) holds executed copies named by the
    SHA-256 of the source notebook's bytes and of the library's sources (:func:`_code_digest`).
    """
    import nbformat

    path = pathlib.Path(path)
    key = hashlib.sha256(path.read_bytes() + _code_digest()).hexdigest()
    if key in _memory:
        return _memory[key]
    cache_dir = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV)
    cached = pathlib.Path(cache_dir) / f"{key}.ipynb" if cache_dir else None
    if cached is not None and cached.exists():
        nb = nbformat.read(cached, as_version=4)
        log.info("using the executed copy of %s in %s", path.name, cache_dir)
    else:
        nb = execute(path)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            nbformat.write(nb, tmp)
            tmp.replace(cached)
    _memory[key] = nb
    return nb


# --------------------------------------------------------------------------- API reference

def _api_modules() -> tuple[str, ...]:
    import sys

    here = str(pathlib.Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from griffe_roles import API_MODULES

    return API_MODULES


#: the modules whose ``__all__`` the reference must cover: the packages and the submodules the
#: reference has pages for (``griffe_roles.API_MODULES``, where the Sphinx roles are resolved)
API_PACKAGES = _api_modules()
_DIRECTIVE = re.compile(r"^::: ([\w.]+)", re.M)


def _resolve(identifier: str):
    """The object a mkdocstrings identifier names (``pkg.mod.Name.attr``), or raise ImportError."""
    import importlib

    parts = identifier.split(".")
    for k in range(len(parts), 0, -1):
        name = ".".join(parts[:k])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue                  # not a module: an attribute of a shorter prefix
            raise                         # a real module failed to import something it needs
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module in {identifier!r}")


def reference_identifiers(api_dir: str | os.PathLike) -> dict[str, str]:
    """``{identifier: page}`` of every ``::: identifier`` directive in the pages of ``api_dir``."""
    found: dict[str, str] = {}
    for page in sorted(pathlib.Path(api_dir).glob("*.md")):
        for identifier in _DIRECTIVE.findall(page.read_text()):
            found.setdefault(identifier, page.name)
    return found


def missing_from_reference(identifiers, packages=API_PACKAGES) -> list[str]:
    """The public names of ``packages`` that no directive of ``identifiers`` documents.

    A name ``pkg.X`` is documented by the directive ``pkg.X`` or by any directive resolving to
    the same object (``pruners.group_sparsity.GROUPINGS`` documents ``pruners.GROUPINGS``).
    Numbers and strings are only matched by name, since equal constants may be one object.
    """
    import importlib

    objects = []
    for identifier in identifiers:
        try:
            objects.append(_resolve(identifier))
        except (ImportError, AttributeError) as err:
            raise ValueError(f"the API reference names {identifier!r}, which does not exist: "
                             f"{err}") from err
    missing = []
    for package in packages:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if f"{package}.{name}" in identifiers:
                continue
            if not isinstance(obj, (bool, int, float, str)) and any(o is obj for o in objects):
                continue
            missing.append(f"{package}.{name}")
    return missing


# --------------------------------------------------------------------------- rendering

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _text(value) -> str:
    return _ANSI.sub("", value if isinstance(value, str) else "".join(value))


def _fence(text: str, lang: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}\n"


def render(nb, name: str) -> tuple[str, dict[str, bytes]]:
    """Markdown for the executed notebook ``nb`` and its figures ``{file name: PNG bytes}``.

    Figures are named ``NAME-CELL-K.png`` and linked relative to the page, which sits beside them.
    """
    parts = [f'!!! note ""\n    This page is the notebook [`{name}.ipynb`]({name}.ipynb) '
             "(download it to run it yourself), executed when the site was built.\n"]
    images: dict[str, bytes] = {}
    title_done = False
    for c, cell in enumerate(nb.cells):
        source = _text(cell.source)
        if cell.cell_type == "markdown":
            if not title_done and source.lstrip().startswith("# "):
                # the page title first, then the download note
                head, _, rest = source.lstrip().partition("\n")
                parts.insert(0, head + "\n")
                source = rest
            title_done = True
            parts.append(source + "\n")
        elif cell.cell_type == "code":
            if source.strip():
                parts.append(_fence(source, "python"))
            for k, out in enumerate(cell.get("outputs", [])):
                kind = out.get("output_type")
                if kind == "stream":
                    parts.append(_fence(_text(out.get("text", "")), "text"))
                elif kind in ("execute_result", "display_data"):
                    data = out.get("data", {})
                    if "image/png" in data:
                        file = f"{name}-{c}-{k}.png"
                        images[file] = base64.b64decode(_text(data["image/png"]))
                        parts.append(f"![output of cell {c}]({file})\n")
                    elif "text/markdown" in data:
                        parts.append(_text(data["text/markdown"]) + "\n")
                    elif "text/plain" in data:
                        parts.append(_fence(_text(data["text/plain"]), "text"))
                elif kind == "error":   # only in a notebook executed with errors allowed
                    raise RuntimeError(f"{name}.ipynb: cell {c} raised {out.get('ename')}")
    return "\n".join(parts), images


# --------------------------------------------------------------------------- mkdocs events

def on_pre_build(config):
    api_dir = pathlib.Path(config["docs_dir"]) / "api"
    for name in missing_from_reference(reference_identifiers(api_dir)):
        log.warning("the API reference (docs/api/*.md) has no '::: ...' entry for the public "
                    "name %s", name)


def on_files(files, config):
    from mkdocs.structure.files import File

    notebooks = sorted((f for f in files if f.src_uri.startswith(f"{NOTEBOOK_DIR}/")
                        and f.src_uri.endswith(".ipynb")), key=lambda f: f.src_uri)
    for f in notebooks:
        stem = pathlib.PurePosixPath(f.src_uri).stem
        page = f"{NOTEBOOK_DIR}/{stem}.md"
        if files.get_file_from_path(page) is not None:
            raise ValueError(f"{page} would hide the rendered notebook {f.src_uri}")
        markdown, images = render(executed(f.abs_src_path), stem)
        files.append(File.generated(config, page, content=markdown))
        for image, png in images.items():
            files.append(File.generated(config, f"{NOTEBOOK_DIR}/{image}", content=png))
    return files
