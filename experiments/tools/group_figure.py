"""The figure of the units page: the groups of a residual stage, read off the real trace.

``python -m experiments.tools.group_figure [--out docs/img/residual_groups.png]`` builds the
zoo's ResNet-20, traces it with :func:`pruners.trace`, and draws its stem and first stage
(three basic blocks) as they run: every convolution, BatchNorm and activation a box, the
residual adds circles, the shortcuts below. Each producer is filled with the colour of its
group (from the trace, not by hand), the per-channel modules with a light shade of the group
whose channels they carry, and the layers that read the stream's channels are outlined in the
stream's colour: the stem and every block's second convolution are one group of 16 channels
(summed at every add), consumed by each block's first convolution and by stage 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from experiments.harness import atomic
from experiments.harness.models import build_model
from pruners import trace

__all__ = ["draw", "main"]

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _colours(graph) -> dict[str, str]:
    """Group name -> colour, the stream (the largest group) first."""
    names = sorted(graph.prunable, key=lambda g: -len(graph.groups[g].members))
    return {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(names)}


def _carrier_group(graph, module: str) -> str | None:
    """The group whose channels the per-channel module ``module`` carries, if one."""
    for name in graph.prunable:
        for node in graph.groups[name].nodes:
            if node.kind == "op" and node.op.kind == "module" and node.op.target == module:
                return name
    return None


def draw(path: str, blocks: int = 3) -> dict[str, list[str]]:
    """Draw the stem and the first ``blocks`` blocks of ResNet-20 into ``path``; return the
    prunable groups drawn, ``{group: members}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, FancyBboxPatch

    model = build_model("resnet20")
    graph = trace(model, torch.zeros(1, 1, 28, 28))
    colour = _colours(graph)
    stream = graph.group_of("conv1").name
    readers = {c.name for c in graph.groups[stream].consumers}
    fig, ax = plt.subplots(figsize=(16, 3.6))
    x = 0.0

    def box(name, label, y, producer, plain=False):
        nonlocal x
        group = graph.group_of(name).name if producer else _carrier_group(graph, name)
        face = colour.get(group, "#dddddd") if producer and not plain else "#f4f4f4"
        if not producer and group is not None:
            face = matplotlib.colors.to_rgba(colour[group], 0.25)
        edge = colour[stream] if name in readers else "#444444"
        ax.add_patch(FancyBboxPatch((x, y - 0.3), 0.8, 0.6, boxstyle="round,pad=0.02",
                                    facecolor=face, edgecolor=edge,
                                    linewidth=3 if name in readers else 1))
        ax.text(x + 0.4, y, label, ha="center", va="center", fontsize=6.5,
                color="white" if producer and group in colour and not plain else "black")
        ax.text(x + 0.4, y - 0.45, name, ha="center", va="top", fontsize=5.5, rotation=30)
        x += 1.0

    def arrow(x0, y0, x1, y1):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="#555555", lw=0.8))

    for name, label in (("conv1", "conv\n3x3"), ("bn1", "BN"), ("act1", "ReLU")):
        box(name, label, 1.0, name == "conv1")
    drawn = {}
    for b in range(blocks):
        start = x
        p = f"layer1.{b}"
        for name, label in ((f"{p}.conv1", "conv\n3x3"), (f"{p}.bn1", "BN"),
                            (f"{p}.act1", "ReLU"), (f"{p}.conv2", "conv\n3x3"), (f"{p}.bn2", "BN")):
            box(name, label, 1.0, "conv" in name)
        ax.add_patch(Circle((x + 0.3, 1.0), 0.22, facecolor="white", edgecolor="#444444"))
        ax.text(x + 0.3, 1.0, "+", ha="center", va="center", fontsize=12)
        arrow(start - 0.1, 1.0, start - 0.1, -0.3)
        arrow(start - 0.1, -0.3, x + 0.3, -0.3)
        arrow(x + 0.3, -0.3, x + 0.3, 0.78)
        ax.text((start + x) / 2, -0.42, "identity shortcut", ha="center", va="top", fontsize=7)
        x += 0.8
        box(f"{p}.act2", "ReLU", 1.0, False)
    box("layer2.0.conv1", "stage 2", 1.0, True, plain=True)
    for name in graph.prunable:
        group = graph.groups[name]
        if any(m.startswith(("conv1", "layer1.")) for m in group.members):
            drawn[name] = list(group.members)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colour[g]) for g in drawn]
    labels = [(f"group '{g}': {len(m)} layers summed, {graph.groups[g].size} channels"
               if len(m) > 1 else f"'{g}': a chain ({graph.groups[g].size} channels)")
              for g, m in drawn.items()]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor=colour[stream],
                                 linewidth=3))
    labels.append(f"reads the channels of '{stream}' (a consumer of the group)")
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3,
              fontsize=7, frameon=False)
    ax.set(xlim=(-0.3, x + 0.2), ylim=(-0.75, 1.45))
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("ResNet-20, stem and stage 1, as traced: the colours are the groups of the "
                 "graph of units", fontsize=9)
    atomic.save_figure(fig, path, dpi=160)
    return drawn


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.tools.group_figure",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/residual_groups.png", help="the PNG to write")
    args = ap.parse_args(argv)
    drawn = draw(args.out)
    for g, members in drawn.items():
        print(f"{g}: {', '.join(members)}")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
