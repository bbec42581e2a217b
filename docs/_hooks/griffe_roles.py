"""A griffe extension for the API reference: the docstrings' Sphinx markup, read as Markdown.

The docstrings of ``saliency`` and ``pruners`` are Google style with Sphinx roles
(``:func:`trace```, ``:class:`~saliency.graph.UnitGraph```) and reST literal blocks
(``Example::``). mkdocstrings renders docstrings as Markdown, where a role would show as text and
its colons would be read as a section item's ``name: description`` separator. Before a docstring
is parsed, this extension

* turns each role into an optional cross-reference: a link when the API reference documents the
  name (``trace`` -> ``saliency.trace``; ``UnitPruner.step`` -> ``pruners.UnitPruner.step``; a
  dotted path as given), plain code otherwise; ``~`` shows the last component, as in Sphinx;
* turns a paragraph's closing ``::`` into ``:`` (a lone ``::`` line is dropped); the indented block
  after it is a code block in Markdown too.

Loaded by mkdocstrings' python handler (``extensions:`` in mkdocs.yml).
"""

from __future__ import annotations

import html
import importlib
import re
from typing import Any

import griffe

#: modules whose public names the API reference documents, in the order a bare name is looked up
API_MODULES = ("saliency", "pruners", "saliency.compare", "pruners.schedules",
               "pruners.shrinknets", "pruners.group_sparsity", "pruners.tristate")

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj|const):"
                  r"`(~?)([\w.]+)(\(\))?`")
LITERAL = re.compile(r"(?m)^(?P<text>.*\S)::[ \t]*$|^[ \t]*::[ \t]*\n")

_targets: dict[str, str] | None = None


def api_targets() -> dict[str, str]:
    """``{name: identifier}`` of the documented public names, e.g. ``trace -> saliency.trace``."""
    global _targets
    if _targets is None:
        _targets = {}
        for module in API_MODULES:
            mod = importlib.import_module(module)
            for name in getattr(mod, "__all__", ()):
                _targets.setdefault(name, f"{module}.{name}")
            _targets.setdefault(module, module)
    return _targets


def _role(m: re.Match) -> str:
    tilde, target, call = m.group(1), m.group(2), m.group(3) or ""
    shown = (target.rsplit(".", 1)[-1] if tilde else target) + call
    head, _, rest = target.partition(".")
    targets = api_targets()
    if target in targets:
        identifier = targets[target]
    elif rest and head in targets:               # a method or attribute: UnitPruner.step
        identifier = f"{targets[head]}.{rest}"
    else:
        identifier = target                      # a dotted path, linked if it is documented
    return (f'<autoref identifier="{html.escape(identifier)}" optional>'
            f"<code>{html.escape(shown)}</code></autoref>")


def _literal(m: re.Match) -> str:
    return f"{m['text']}:" if m["text"] is not None else ""


def markdown(docstring: str) -> str:
    """The docstring with its roles and literal-block markers rewritten (see the module)."""
    return LITERAL.sub(_literal, ROLE.sub(_role, docstring))


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring with :func:`markdown` before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
