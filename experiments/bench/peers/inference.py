"""(c) CPU inference time of the pruned networks (unpruned, ours, Torch-Pruning magnitude,
``ln_structured``) with :func:`experiments.harness.timing.time_models`."""

from __future__ import annotations

import statistics
from typing import Mapping

import torch
import torch.nn as nn

from experiments.bench.peers.methods import Context
from experiments.harness.timing import cpu_mark, others_busy, time_models

__all__ = ["TIMED", "run_inference"]

#: the pruned models timed beside the unpruned one, where the run has them
TIMED = ("ours_mrs", "tp_magnitude", "ln_structured")


def run_inference(name: str, base: nn.Module, models: Mapping[float, Mapping[str, nn.Module]],
                  ctx: Context, log) -> list[dict]:
    """Per size and batch of ``ctx.setting.inference_batches``: the median milliseconds per
    call of the unpruned network and of the :data:`TIMED` ones among ``models`` (size ->
    method -> fine-tuned model, or pruned model where the network is not fine-tuned), timed in
    interleaved blocks."""
    s = ctx.setting
    rows = []
    for target, by_method in models.items():
        chosen = [m for m in TIMED if m in by_method]
        nets = [base] + [by_method[m] for m in chosen]
        for batch in s.inference_batches:
            torch.manual_seed(batch)
            x = torch.randn(batch, *ctx.example.shape[1:])
            mark = cpu_mark()
            t = time_models(nets, x, repeats=s.inference_repeats,
                            block_seconds=s.inference_block_seconds,
                            warmup_seconds=s.inference_warmup_seconds)
            row = {"model": name, "target": float(target), "batch": int(batch),
                   "ms": {"unpruned": statistics.median(t[0]) * 1e3},
                   "threads": torch.get_num_threads(),
                   "other_cpus_busy": others_busy(mark)}
            for m, tm in zip(chosen, t[1:]):
                row["ms"][m] = statistics.median(tm) * 1e3
            rows.append(row)
    return rows
