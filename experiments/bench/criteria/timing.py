"""CPU inference time at each operating point, beside its MAC ratio.

Every method that prunes to given widths ends at the same layer shapes, so one pruned model per
(network, point) stands for all of them (the first held-out seed's baseline pruned to the common
widths); ``torch.nn.utils.prune`` leaves masked dense layers, which run as fast as the unpruned
network. The pruned models and the unpruned one are timed in turn
(:func:`experiments.harness.timing.time_models`, one torch thread, batch ``timing_batch``), so
the machine's drifts hit them alike; the medians and the speedups are written to
``ROOT/timing.json`` (atomically), with the CPUs other processes kept busy meanwhile.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable, Sequence

import torch

from experiments.bench.criteria.data import baseline, load_data
from experiments.bench.criteria.store import Store
from experiments.bench.criteria.trial import setting_named
from experiments.bench.peers.widths import common_model, widths_for_reduction
from experiments.harness import atomic
from experiments.harness.timing import cpu_mark, others_busy, time_models

__all__ = ["run_timing"]


def run_timing(root: str, setting: str, networks: Sequence[str],
               log: Callable[[str], None]) -> dict:
    """Time every network's pruned models against the unpruned one; returns what it wrote."""
    s = setting_named(setting)
    store = Store(root, s)
    path = Path(root) / "timing.json"
    out = atomic.read_json(path) if path.exists() else {}
    torch.set_num_threads(1)
    seed = s.heldout_seeds[0]
    for net in s.networks:
        if net.name not in networks or net.name in out:
            continue
        base, _ = baseline(net, s, seed, store.root / "baselines", log)
        data = load_data(net, s, seed, "heldout")
        x = data.eval.tensors[0][:s.timing_batch]
        models = [base]
        for point in net.points:
            kept, _macs = widths_for_reduction(base, data.example, point, "macs")
            models.append(common_model(base, data.example, kept))
        mark = cpu_mark()
        times = time_models(models, x, repeats=s.timing_repeats)
        busy = others_busy(mark)
        medians = [statistics.median(t) * 1e3 for t in times]
        out[net.name] = {"batch": len(x), "unpruned_ms": medians[0], "others_busy": busy,
                         "points": [{"point": p, "ms": ms, "speedup": medians[0] / ms}
                                    for p, ms in zip(net.points, medians[1:])]}
        log(f"timing {net.name}: unpruned {medians[0]:.3f} ms per batch of {len(x)}; "
            + ", ".join(f"{p:g}x {medians[0] / ms:.2f}x faster"
                        for p, ms in zip(net.points, medians[1:]))
            + (f" (other processes kept {busy:.2f} CPUs busy)" if busy else ""))
        atomic.write_json(path, out)
    return out
