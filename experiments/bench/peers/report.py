"""The printed report of a peers run: one table per part, the ratios, the targets' status."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from experiments.bench.peers.setting import INFORMATIONAL, TARGETS, Setting
from experiments.harness.tables import format_table

__all__ = ["accuracy_table", "timing_table", "inference_table", "constant_table",
           "consumer_table", "ratio_table", "print_report"]

STATUS = {True: "met", False: "NOT MET", None: "not measured"}


def _size(target: float) -> str:
    return f"{target:g}x"


def accuracy_table(rows: Sequence[Mapping]) -> str:
    """(a): per network, size and method, the kept widths, the parameter count and reduction,
    the MAC reduction, and the test accuracy right after pruning and after fine-tuning ("-":
    not fine-tuned)."""
    return format_table(
        [{**r, "widths": "-".join(str(v) for v in r["kept"].values())} for r in rows],
        {"model": "model", "target": "size", "label": "method", "widths": "widths",
         "params": "params", "reduction": "red.", "mac_reduction": "MAC red.",
         "acc_pruned": "after pruning", "acc_finetuned": "after fine-tune"},
        formats={"target": lambda t: f"{t:g}x", "params": ",",
                 "reduction": lambda v: f"{v:.2f}x", "mac_reduction": lambda v: f"{v:.2f}x",
                 "acc_pruned": ".4f", "acc_finetuned": ".4f"},
        align={"acc_finetuned": ">"}, group=("model", "target"))


def timing_table(rows: Sequence[Mapping]) -> str:
    """(b): per network and case, the median and best milliseconds and the CPUs other processes
    kept busy."""
    return format_table(rows, {"model": "model", "case": "case", "median_ms": "median ms",
                               "best_ms": "best ms", "other_cpus_busy": "other CPUs"},
                        formats={"median_ms": ".2f", "best_ms": ".2f",
                                 "other_cpus_busy": ".2f"}, align={"other_cpus_busy": ">"})


def inference_table(rows: Sequence[Mapping]) -> str:
    """(c): per network, size and batch, the median milliseconds per call of each model."""
    flat = [{**r, **{f"ms_{k}": v for k, v in r["ms"].items()}} for r in rows]
    ms = {"ms_unpruned": "unpruned ms", "ms_ours_mrs": "ours ms",
          "ms_tp_magnitude": "TP mag. ms", "ms_ln_structured": "ln_struct. ms"}
    return format_table(flat, {"model": "model", "target": "size", "batch": "batch", **ms,
                               "other_cpus_busy": "other CPUs"},
                        formats={"target": _size, "other_cpus_busy": ".2f",
                                 **{k: ".3f" for k in ms}},
                        align={"target": ">", "other_cpus_busy": ">", **{k: ">" for k in ms}})


def constant_table(rows: Sequence[Mapping]) -> str:
    """(d): per network, case, dtype and variant, the largest logit change, the largest logit,
    (float32) the rounding floor, and (ours with mean replacement, float64) the figure the
    exactness target reads."""
    return format_table(rows, {"model": "model", "case": "case", "dtype": "dtype",
                               "method": "method", "layer": "group", "units": "units",
                               "max_abs_change": "max |change|", "max_abs_logit": "max |logit|",
                               "rounding_floor": "f32 floor", "judged_change": "where exact"},
                        formats={"max_abs_change": ".3e", "max_abs_logit": ".3f",
                                 "rounding_floor": ".3e", "judged_change": ".3e"},
                        align={"rounding_floor": ">", "judged_change": ">"})


def consumer_table(rows: Sequence[Mapping]) -> str:
    """(d), ours with mean replacement in float64: per consumer of each planted group, the
    largest change of its output on the planted input (all, interior, border pixels)."""
    flat = [{"model": r["model"], "case": r["case"], **c} for r in rows
            if r["method"] == "ours_mean_replacement" and r.get("consumers")
            for c in r["consumers"]]
    return format_table(flat, {"model": "model", "case": "case", "consumer": "consumer",
                               "padded": "zero-padded", "max_change": "max |change|",
                               "interior_change": "interior", "border_change": "border"},
                        formats={"max_change": ".3e", "interior_change": ".3e",
                                 "border_change": ".3e", "padded": lambda v: "yes" if v else "no"},
                        align={"interior_change": ">", "border_change": ">"})


def ratio_table(rows: Sequence[Mapping]) -> str:
    """Every ``ours / peer`` comparison with both figures."""
    return format_table(rows, {"comparison": "comparison", "model": "model", "target": "size",
                               "case": "case", "ours": "ours", "peer": "peer",
                               "ours_value": "ours",
                               "peer_value": "peer", "ratio": "ratio"},
                        formats={"target": _size, "ours_value": ".6g", "peer_value": ".6g",
                                 "ratio": ".4f"},
                        align={"target": ">", "ratio": ">"})


def print_report(log: Callable[[str], None], s: Setting, parts: Mapping[str, list[dict]],
                 ratios: list[dict], met: Mapping[str, Any]) -> None:
    """Every table (``parts``: ``accuracy``, ``timing``, ``inference``, ``constant_units``
    rows), the ratios, then each target's and each informational comparison's status."""
    log("")
    log("(a) test accuracy at equal size (widths: units kept per prunable group; params: "
        "physical count, ln_structured's once its masked units are removed)")
    log(accuracy_table(parts["accuracy"]))
    log("")
    sizes = {r["model"]: r.get("timing_reduction", s.timing_reduction)
             for r in parts["timing"]}
    if len(set(sizes.values())) <= 1:
        size = f"the {next(iter(sizes.values()), s.timing_reduction):g}x"
    else:
        size = "each network's (" + ", ".join(f"{m} {v:g}x" for m, v in sizes.items()) + ")"
    log(f"(b) Taylor (and MRS) scoring and physical removal of {size} "
        f"selection ({s.repeats} alternated repeats, fresh copy each)")
    log(timing_table(parts["timing"]))
    log("")
    log("(c) CPU inference, median ms per call (time_models, interleaved)")
    log(inference_table(parts["inference"]))
    log("")
    log("(d) planted constant units removed: largest |logit change| over test images")
    log(constant_table(parts["constant_units"]))
    if any(r.get("consumers") for r in parts["constant_units"]):
        log("")
        log("(d) ours with mean replacement, float64: each consumer's output change on the "
            "planted input")
        log(consumer_table(parts["constant_units"]))
    log("")
    log("ours / peer")
    log(ratio_table(ratios))
    log("")
    for k, desc in TARGETS.items():
        log(f"target {k}: {desc}: {STATUS[met.get(k)]}")
    for k, desc in INFORMATIONAL.items():
        log(f"(not a target) {k}: {desc}: {STATUS[met.get(k)]}")
