"""Figures shared by the experiments: training curves, pruning over steps, count axes.

Every function draws with matplotlib and seaborn on the ``Agg`` backend and
writes through :meth:`experiments.harness.run.RunContext.save_figure`
(atomically) or returns the axes it styled.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["log_count_axis", "plot_history", "plot_pruning"]


def log_count_axis(ax, axis: str = "x") -> None:
    """A log scale for a count (parameters, MACs), labelled in plain numbers with thousands
    separators at 1, 2 and 5 times each power of ten, so a range within one decade still has
    labels (matplotlib's default labels only the powers of ten there)."""
    import matplotlib.ticker as mt

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    fmt = mt.FuncFormatter(lambda v, _: f"{v:,.0f}")
    target.set_major_locator(mt.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(fmt)
    target.set_minor_locator(mt.LogLocator(base=10, subs=tuple(range(1, 10))))
    target.set_minor_formatter(mt.NullFormatter())


def plot_history(history: list[dict], ctx, name: str = "curves.png", title: str = "") -> None:
    """Loss and accuracy per epoch (seaborn), written atomically into the run folder of ``ctx``
    (a :class:`~experiments.harness.run.RunContext`) as ``name``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [r["epoch"] for r in history]
    for key, label in (("train_loss", "train"), ("val_loss", "validation"),
                       ("test_loss", "test")):
        if key in history[0]:
            sns.lineplot(x=epochs, y=[r[key] for r in history], ax=axes[0], label=label,
                         marker="o")
    axes[0].set(xlabel="epoch", ylabel="loss")
    for key, label in (("val_acc", "validation"), ("test_acc", "test")):
        if key in history[0]:
            sns.lineplot(x=epochs, y=[100 * r[key] for r in history], ax=axes[1], label=label,
                         marker="o")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)")
    if title:
        fig.suptitle(title)
    ctx.save_figure(fig, name)


def plot_pruning(ctx, pruned_steps: Sequence[Sequence[float]],
                 dense_steps: Sequence[Sequence[float]] | None = None,
                 rounds: Sequence[Mapping[str, Any]] = (), name: str = "pruning.png",
                 title: str = "", smooth: int = 50) -> None:
    """Loss and fraction pruned over steps (Fig. 2.8 / 4.6), and widths per round.

    ``pruned_steps`` / ``dense_steps``: ``[step, loss, fraction]`` rows of
    :attr:`PrunerCallback.steps`; the loss is averaged over windows of
    ``smooth`` steps, as U. Evci, *Detecting Dead Weights and Units in Neural
    Networks*, MS thesis, NYU, 2018 (https://arxiv.org/abs/1806.06068) plots
    it every 50 mini-batches.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    widths = [k for k in (rounds[0] if rounds else {}) if k.startswith("remaining/")]
    ncols = 3 if widths else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.6))

    def windows(rows):
        out_s, out_l = [], []
        for i in range(0, len(rows), smooth):
            chunk = rows[i:i + smooth]
            out_s.append(chunk[-1][0])
            out_l.append(sum(r[1] for r in chunk) / len(chunk))
        return out_s, out_l

    for rows, label in ((pruned_steps, "pruned"), (dense_steps, "unpruned")):
        if rows:
            s, loss = windows(list(rows))
            sns.lineplot(x=s, y=loss, ax=axes[0], label=label)
    axes[0].set(xlabel="step", ylabel=f"training loss (mean of {smooth} steps)")
    if pruned_steps:
        sns.lineplot(x=[r[0] for r in pruned_steps], y=[r[2] for r in pruned_steps],
                     ax=axes[1], label="pruned", drawstyle="steps-post")
    axes[1].set(xlabel="step", ylabel="fraction of parameters pruned", ylim=(0, 1))
    if widths:
        for key in widths:
            sns.lineplot(x=[r["epoch"] for r in rounds], y=[r[key] for r in rounds],
                         ax=axes[2], marker="o", label=key.split("/", 1)[1])
        axes[2].set(xlabel="epoch of the round", ylabel="units left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    ctx.save_figure(fig, name)
