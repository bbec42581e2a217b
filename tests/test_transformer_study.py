"""The transformer pruning study (experiments.studies.transformers), run --quick.

``vit-head-ffn-pruning`` on the installed Fashion-MNIST when it is there, else on generated IDX
files: 384 images per split, a 2-block ViT of width 16 (4 heads, FFN 32). Every figure the
study reports is checked against what its saved checkpoints give: the baseline and every
cell's network right after pruning (``pruned.pt``) and after the recovery (``checkpoint.pt``)
are loaded and evaluated again, their parameters and MACs counted; every pruned network is
rebuilt here from the baseline, the saved scores and an independent selection; exact MRP is
checked against a naive loop of ``remove_units`` per unit; the correlations against
``scipy.stats.spearmanr`` of the saved scores; and a rerun, or a rerun after a kill, against
the uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from data_files import quick_run
from scipy.stats import spearmanr

from experiments.harness.callbacks import CosineLR
from experiments.cli import main
from experiments.harness.callbacks import scoring_batches
from experiments.harness.checkpoint import load_checkpoint, model_from_checkpoint
from experiments.harness.models import build_model
from experiments.harness.run import load_data
from experiments.harness.training import Trainer, evaluate
from experiments.studies.transformers import oneshot
from pruners import count_macs, count_params, remove_units

# the slow tier: every test here runs the study
pytestmark = pytest.mark.slow

NAME = "vit-head-ffn-pruning"
PNG = b"\x89PNG\r\n\x1a\n"
SCORERS = ("mrs", "norm", "taylor", "random_unit", "mrp")
FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return quick_run(NAME, tmp_path_factory)


@pytest.fixture(scope="module")
def data(run):
    return load_data(run[1])


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _args(out, cfg, *extra):
    sets = ["--set", f"data_dir={cfg['data_dir']}"]
    if cfg["val_size"] != 5000:
        sets += ["--set", f"val_size={cfg['val_size']}"]
    return ["run", NAME, "--quick", "--out", str(out), *sets, *extra]


def _model(path):
    return model_from_checkpoint(load_checkpoint(path)).eval()


def _float(v):
    return None if v == "" else float(v)


def test_the_quick_run_writes_every_output(run):
    out, cfg, res = run
    for name in ("config.json", "results.json", "pruning.csv", "spearman.csv",
                 "unit_scores.csv", "scores.json", "pruning.png", "log.txt"):
        assert (out / name).exists(), name
    for name in ("checkpoint.pt", "history.csv", "settings.json"):
        assert (out / "baseline" / name).exists(), name
    for s in SCORERS:
        for f in FRACTIONS:
            cell = out / oneshot.cell_name(s, f)
            for name in ("pruned.pt", "pruned.json", "checkpoint.pt", "history.csv",
                         "settings.json"):
                assert (cell / name).exists(), f"{cell}/{name}"
    assert (out / "pruning.png").read_bytes()[:8] == PNG
    assert cfg["quick"] is True and (cfg["depth"], cfg["width"], cfg["heads"]) == (2, 16, 4)
    assert res["figures"] == ["pruning.png"]
    assert [(r["scorer"], r["fraction"]) for r in res["grid"]] == [
        (s, f) for s in SCORERS for f in FRACTIONS]
    hist = _rows(out / "baseline/history.csv")
    assert [int(r["epoch"]) for r in hist] == list(range(1, cfg["epochs"] + 1))
    # the cosine: the last epoch's rate is the rate after the last step (0)
    assert float(hist[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)


def test_the_baseline_figures_are_what_its_checkpoint_gives(run, data):
    out, cfg, res = run
    x = data.train.tensors[0][:1]
    m = _model(out / "baseline/checkpoint.pt")
    test = evaluate(m, data.test, batch_size=cfg["eval_batch_size"])
    val = evaluate(m, data.val, batch_size=cfg["eval_batch_size"])
    assert res["baseline"]["test_acc"] == test["acc"] and res["baseline"]["val_acc"] == val["acc"]
    assert res["baseline"]["test_loss"] == pytest.approx(test["loss"], rel=1e-6)
    assert res["model"]["params"] == count_params(m) == count_params(
        build_model("vit_tiny", patch_size=7, depth=2, width=16, heads=4, ffn=32))
    assert res["model"]["macs"] == count_macs(m, x)
    assert res["model"]["layers"] == {
        "blocks.0.attn": {"kind": "heads", "size": 4, "kv_heads": 4},
        "blocks.1.attn": {"kind": "heads", "size": 4, "kv_heads": 4},
        "blocks.0.fc1": {"kind": "ffn", "size": 32}, "blocks.1.fc1": {"kind": "ffn", "size": 32}}


def test_every_cell_figure_is_what_its_saved_networks_give(run, data):
    out, cfg, res = run
    x = data.train.tensors[0][:1]
    csv_rows = _rows(out / "pruning.csv")
    assert len(csv_rows) == len(res["grid"]) == len(SCORERS) * len(FRACTIONS)
    base = _model(out / "baseline/checkpoint.pt")
    p0, m0 = count_params(base), count_macs(base, x)
    for row, r in zip(csv_rows, res["grid"]):
        cell = out / oneshot.cell_name(r["scorer"], r["fraction"])
        assert (row["scorer"], float(row["fraction"])) == (r["scorer"], r["fraction"])
        for stage, path in (("pruned", "pruned.pt"), ("recovered", "checkpoint.pt")):
            m = _model(cell / path)
            assert count_params(m) == r["params"] == int(row["params"])
            assert count_macs(m, x) == r["macs"] == int(row["macs"])
            for split in ("test", "val"):
                got = evaluate(m, getattr(data, split), batch_size=cfg["eval_batch_size"])
                assert r[f"{split}_acc_{stage}"] == got["acc"] == float(
                    row[f"{split}_acc_{stage}"])
                assert r[f"{split}_loss_{stage}"] == pytest.approx(got["loss"], rel=1e-6)
        assert r["params"] < p0 and r["macs"] < m0
        # the heads and neurons the row reports are those the network lost
        heads = sum(4 - m.blocks[i].attn.num_heads for i in range(2))
        neurons = sum(32 - m.blocks[i].fc1.out_features for i in range(2))
        assert (r["heads_removed"], r["neurons_removed"]) == (heads, neurons)
        assert (r["heads_total"], r["neurons_total"]) == (8, 64)
        # the recovery: one epoch over the fixed subset, the same steps in every cell
        hist = _rows(cell / "history.csv")
        assert len(hist) == 1 and int(hist[0]["step"]) == r["recover_steps"] == math.ceil(
            cfg["recover_samples"] / cfg["batch_size"])


def test_every_pruned_network_is_rebuilt_from_the_baseline_and_the_saved_scores(run, data):
    """Independent selection (per layer, round(f n) lowest scores, at most n - 1) and removal
    with mean replacement on the scoring sample give the saved pruned network."""
    out, cfg, res = run
    x = data.train.tensors[0][:1]
    scores = json.loads((out / "scores.json").read_text())["scores"]
    sample = scoring_batches(data.train, cfg["score_samples"], cfg["score_batch"], cfg["seed"])
    counts = {0.1: (0, 3), 0.2: (1, 6), 0.3: (1, 10), 0.5: (2, 16), 0.7: (3, 22)}
    for r in res["grid"]:
        k_heads, k_neurons = counts[r["fraction"]]
        units = {}
        for layer, k in [(f"blocks.{i}.attn", k_heads) for i in range(2)] + [
                (f"blocks.{i}.fc1", k_neurons) for i in range(2)]:
            s = scores[r["scorer"]][layer]
            order = sorted(range(len(s)), key=lambda i: (s[i], i))
            if k:
                units[layer] = sorted(order[:k])
        cell = out / oneshot.cell_name(r["scorer"], r["fraction"])
        saved = load_checkpoint(cell / "pruned.pt")
        assert saved["units"] == units
        assert json.loads((cell / "pruned.json").read_text())["info"]["units"] == units
        m = _model(out / "baseline/checkpoint.pt")
        remove_units(m, units, replacement="mean", data=sample, example_input=x)
        mine = m.state_dict()
        assert mine.keys() == saved["state_dict"].keys()
        for key, v in saved["state_dict"].items():
            assert torch.allclose(mine[key], v, atol=1e-6, rtol=0), key


def test_exact_mrp_is_a_naive_loop_of_mean_replacement(run, data):
    out, cfg, _ = run
    x = data.train.tensors[0][:1]
    scores = json.loads((out / "scores.json").read_text())["scores"]["mrp"]
    sample = scoring_batches(data.train, cfg["score_samples"], cfg["score_batch"], cfg["seed"])
    base = _model(out / "baseline/checkpoint.pt").double()
    sample64 = [(a.double(), b) for a, b in sample]

    def losses(m):
        with torch.no_grad():
            return torch.cat([F.cross_entropy(m(a), b, reduction="none") for a, b in sample64])

    before = losses(base)
    for layer, s in scores.items():
        for i, v in enumerate(s):
            m = _model(out / "baseline/checkpoint.pt").double()
            remove_units(m, {layer: [i]}, replacement="mean", data=sample64,
                         example_input=x.double())
            naive = float((losses(m) - before).abs().sum())
            assert v == pytest.approx(naive, rel=1e-3, abs=1e-5), (layer, i)


def test_the_spearman_table_is_spearmanr_of_the_saved_scores(run):
    out, _, res = run
    units = _rows(out / "unit_scores.csv")
    table = _rows(out / "spearman.csv")
    scores = json.loads((out / "scores.json").read_text())["scores"]
    layers = ["blocks.0.attn", "blocks.1.attn", "blocks.0.fc1", "blocks.1.fc1"]
    assert [(r["layer"], r["scorer"]) for r in table] == [
        (layer, s) for layer in layers for s in SCORERS if s != "mrp"]
    for row, r in zip(table, res["spearman"]):
        mine = [u for u in units if u["layer"] == row["layer"]]
        assert [int(u["unit"]) for u in mine] == list(range(int(row["units"])))
        for s in SCORERS:
            assert [float(u[s]) for u in mine] == scores[s][row["layer"]]
        rho, p = spearmanr([float(u[row["scorer"]]) for u in mine], [float(u["mrp"]) for u in mine])
        if math.isnan(rho):
            assert row["spearman"] == "" and r["spearman"] is None
        else:
            assert _float(row["spearman"]) == float(rho) == r["spearman"]
            assert _float(row["p_value"]) == float(p)
        assert row["kind"] == ("heads" if row["layer"].endswith("attn") else "ffn")
    for kind, by in res["spearman_summary"].items():
        for s, v in by.items():
            vals = [r["spearman"] for r in res["spearman"] if r["kind"] == kind
                    and r["scorer"] == s and r["spearman"] is not None]
            assert v["layers"] == len(vals)
            if vals:
                assert v["mean"] == pytest.approx(sum(vals) / len(vals))


def test_a_rerun_resumes_instead_of_retraining(run):
    out, cfg, res = run
    ckpts = {p: p.stat().st_mtime_ns for p in out.glob("**/*.pt")}
    assert len(ckpts) == 1 + 2 * len(SCORERS) * len(FRACTIONS)
    assert main(_args(out, cfg)) == 0
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts  # nothing was done again
    log = (out / "log.txt").read_text()
    assert f"baseline: already trained ({cfg['epochs']} epochs" in log
    assert "scores: found in scores.json" in log
    assert log.count("(found)") == len(SCORERS) * len(FRACTIONS)
    again = json.loads((out / "results.json").read_text())
    for key in ("grid", "spearman", "baseline", "scoring"):
        assert again[key] == res[key], key


def test_a_killed_run_resumes_where_it_stopped(run, tmp_path, monkeypatch):
    """Killed after baseline epoch 2, then in the recovery of one cell, and rerun: the same
    figures as uninterrupted."""
    _, cfg, res = run
    killed = tmp_path / "killed"
    save = Trainer.save
    where = {"folder": "baseline", "epoch": 2}

    def save_then_die(self, path=None):
        save(self, path)
        if self.epoch == where["epoch"] and self.checkpoint.parent.name == where["folder"]:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(_args(killed, cfg))
    assert load_checkpoint(killed / "baseline/checkpoint.pt")["epoch"] == 2
    where.update(folder="taylor-f0.3", epoch=1)
    with pytest.raises(KeyboardInterrupt):
        main(_args(killed, cfg))
    assert not (killed / "results.json").exists()
    monkeypatch.setattr(Trainer, "save", save)
    assert main(_args(killed, cfg)) == 0
    log = (killed / "log.txt").read_text()
    assert f"baseline: resuming after epoch 2 of {cfg['epochs']}" in log
    again = json.loads((killed / "results.json").read_text())

    def untimed(v):  # the figures without the times measured
        if isinstance(v, dict):
            return {k: untimed(x) for k, x in v.items() if not k.endswith(("_s", "time_s"))}
        return [untimed(x) for x in v] if isinstance(v, list) else v

    for key in ("grid", "spearman", "baseline"):
        assert untimed(again[key]) == untimed(res[key]), key
    # a rerun with other training settings into the same folder is refused
    assert main(_args(killed, cfg, "--set", "lr=0.02")) == 2


def test_the_selection_helpers():
    layers = {"a": {"kind": "heads", "size": 8, "kv_heads": 8},
              "g": {"kind": "heads", "size": 8, "kv_heads": 2},
              "f": {"kind": "ffn", "size": 256}}
    assert [oneshot.removal_counts(layers, f) for f in FRACTIONS] == [
        {"a": 1, "g": 0, "f": 26}, {"a": 2, "g": 2, "f": 51}, {"a": 2, "g": 2, "f": 77},
        {"a": 4, "g": 4, "f": 128}, {"a": 6, "g": 6, "f": 179}]
    assert oneshot.removal_counts({"a": {"kind": "heads", "size": 2, "kv_heads": 2}}, 0.9) == {
        "a": 1}                                       # at least one head is left
    s = {"a": [5, 1, 1, 0, 7, 6, 2, 3], "g": [9, 1, 8, 7, 0.5, 0.1, 4, 3], "f": list(range(256))}
    sel = oneshot.select_units(s, layers, 0.5)
    assert sel["a"] == [1, 2, 3, 6]                   # ties to the lower index
    assert sel["g"] == [1, 3, 4, 5]                   # two of each key/value group of four
    assert sel["f"] == list(range(128))
    lr = CosineLR(1e-3, 100)
    assert (lr.at(0), lr.at(50), lr.at(100)) == pytest.approx((1e-3, 5e-4, 0))


@pytest.mark.parametrize("bad,match", [
    ({"scorers": ["mrs"]}, "scorers"), ({"scorers": ["mrs", "mrp", "nope"]}, "scorers"),
    ({"fractions": [0.1, 1.0]}, "fractions"), ({"fractions": []}, "fractions"),
    ({"recover_samples": 0}, "recover_samples"), ({"heads": 3}, "multiple of heads"),
    ({"patch_size": 5}, "patch_size"), ({"lr_schedule": "step"}, "lr_schedule")])
def test_bad_settings_are_refused_before_anything_is_written(bad, match):
    from experiments.harness.registry import get_experiment, resolve_config

    exp = get_experiment(NAME)
    cfg = resolve_config(exp, bad, quick=True)
    with pytest.raises(ValueError, match=match):
        exp.validate(cfg)


# --------------------------------------------------------------------------- the decoder LM

LM = "decoder-lm-pruning"


def word_corpus(folder, seed: int):
    """A ``fortunes``-format file of 400 quotations of 4-15 random words (of 8) in ``folder``;
    returns the folder."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    gen = torch.Generator().manual_seed(seed)
    docs = [" ".join(words[int(j)] for j in torch.randint(0, 8, (int(n),), generator=gen))
            for n in torch.randint(4, 16, (400,), generator=gen)]
    (folder / "words").write_text("\n%\n".join(docs) + "\n", encoding="utf-8")
    return folder


def quick_text_run(tmp_path_factory, experiment: str, seed: int, *settings: str):
    """``experiment --quick`` on generated text (quotations of random words), with more
    ``--set`` settings: ``(folder, config, results)``."""
    corpus = word_corpus(tmp_path_factory.mktemp("text"), seed=seed)
    out = tmp_path_factory.mktemp(experiment.replace("-", "_"))
    extra = [a for kv in settings for a in ("--set", kv)]
    assert main(["run", experiment, "--quick", "--out", str(out), "--set",
                 f"data_dir={corpus}", *extra]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    return out, cfg, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """``decoder-lm-pruning --quick`` on generated text."""
    return quick_text_run(tmp_path_factory, LM, seed=0)


def test_the_decoder_figures_are_what_its_saved_networks_give(lm_run):
    from experiments.harness.training import token_cross_entropy
    from experiments.studies.transformers.decoder import load_text

    out, cfg, res = lm_run
    data = load_text(cfg)
    x = data.train.tensors[0][:1]
    bs = cfg["eval_batch_size"]
    base = _model(out / "baseline/checkpoint.pt")
    got = evaluate(base, data.val, batch_size=bs, loss_fn=token_cross_entropy)
    assert res["baseline"]["val_loss"] == pytest.approx(got["loss"], rel=1e-6)
    assert res["baseline"]["val_acc"] == got["acc"]
    assert res["model"]["params"] == count_params(base) and res["model"]["macs"] == count_macs(
        base, x)
    assert set(res["model"]["layers"]) == {"blocks.0.attn", "blocks.1.attn", "blocks.0.gate",
                                           "blocks.1.gate"}
    scores = json.loads((out / "scores.json").read_text())["scores"]
    sample = scoring_batches(data.train, cfg["score_samples"], cfg["score_batch"], cfg["seed"])
    # per key/value group of 2 query heads: round(2 f) at most 1; of 24 SwiGLU neurons round(24 f)
    counts = {0.1: (0, 2), 0.2: (0, 5), 0.3: (1, 7), 0.5: (1, 12), 0.7: (1, 17)}
    rows = _rows(out / "pruning.csv")
    assert [(r["scorer"], float(r["fraction"])) for r in rows] == [
        (s, f) for s in SCORERS for f in FRACTIONS]
    for row, r in zip(rows, res["grid"]):
        cell = out / oneshot.cell_name(r["scorer"], r["fraction"])
        per_group, k = counts[r["fraction"]]
        units = {}
        for i in range(2):
            s = scores[r["scorer"]][f"blocks.{i}.attn"]
            chosen = [g * 2 + min((0, 1), key=lambda j: (s[g * 2 + j], j))
                      for g in range(2)] if per_group else []
            if chosen:
                units[f"blocks.{i}.attn"] = sorted(chosen)
        for i in range(2):
            s = scores[r["scorer"]][f"blocks.{i}.gate"]
            units[f"blocks.{i}.gate"] = sorted(sorted(range(24), key=lambda j: (s[j], j))[:k])
        saved = load_checkpoint(cell / "pruned.pt")
        assert saved["units"] == units
        m = _model(out / "baseline/checkpoint.pt")
        remove_units(m, units, replacement="mean", data=sample, example_input=x)
        for key, v in saved["state_dict"].items():
            assert torch.allclose(m.state_dict()[key], v, atol=1e-6, rtol=0), key
        for stage, path in (("pruned", "pruned.pt"), ("recovered", "checkpoint.pt")):
            m = _model(cell / path)
            for blk in m.blocks:   # every key/value group keeps as many query heads
                assert blk.attn.num_kv_heads == 2 and blk.attn.num_heads == 4 - 2 * per_group
                assert blk.gate.out_features == blk.up.out_features == 24 - k
            assert count_params(m) == r["params"] == int(row["params"])
            assert count_macs(m, x) == r["macs"] == int(row["macs"])
            got = evaluate(m, data.val, batch_size=bs, loss_fn=token_cross_entropy)
            assert r[f"val_loss_{stage}"] == pytest.approx(got["loss"], rel=1e-6)
            assert float(row[f"val_loss_{stage}"]) == pytest.approx(got["loss"], rel=1e-6)
            assert r[f"val_acc_{stage}"] == got["acc"]
        assert "test_loss_pruned" not in r          # the decoder is judged on validation only
    # exact MRP of the first block's heads and neurons: a naive loop of mean replacement
    base = base.double()
    sample64 = [(a, b) for a, b in sample]

    def losses(m):  # a window's loss: the mean of its characters' (saliency.base's contract)
        with torch.no_grad():
            return torch.cat([token_cross_entropy(m(a), b, reduction="none").mean(1)
                              for a, b in sample64])

    before = losses(base)
    for i, v in enumerate(scores["mrp"]["blocks.0.gate"]):
        m = _model(out / "baseline/checkpoint.pt").double()
        remove_units(m, {"blocks.0.gate": [i]}, replacement="mean", data=sample64,
                     example_input=x)
        assert v == pytest.approx(float((losses(m) - before).abs().sum()), rel=1e-3,
                                  abs=1e-5), i
    # a single query head of a key/value group cannot be removed alone: hold its slice of the
    # output projection's input at its mean (over the sample's windows and positions) by a hook
    proj = base.blocks[0].attn.out_proj
    seen = []
    hook = proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    losses(base)
    hook.remove()
    mean = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen]).mean(0)
    hd = base.blocks[0].attn.head_dim
    for h, v in enumerate(scores["mrp"]["blocks.0.attn"]):
        def hold(mod, args, h=h):
            y = args[0].clone()
            y[..., h * hd:(h + 1) * hd] = mean[h * hd:(h + 1) * hd]
            return (y,)

        hook = proj.register_forward_pre_hook(hold)
        try:
            naive = float((losses(base) - before).abs().sum())
        finally:
            hook.remove()
        assert v == pytest.approx(naive, rel=1e-3, abs=1e-5), h
    # the correlations
    table = _rows(out / "spearman.csv")
    for row in table:
        rho, _ = spearmanr(scores[row["scorer"]][row["layer"]], scores["mrp"][row["layer"]])
        assert (row["spearman"] == "") if math.isnan(rho) else float(row["spearman"]) == rho


# --------------------------------------------------------------------------- transformers' Llama

HF = "hf-llama-pruning"


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """``hf-llama-pruning --quick`` on generated text."""
    pytest.importorskip("transformers")  # two scorers and two fractions keep it short
    return quick_text_run(tmp_path_factory, HF, 1, 'scorers=["mrs", "mrp"]',
                          "fractions=[0.3, 0.7]")


def test_the_llama_of_transformers_is_pruned_and_every_figure_reproduces(hf_run):
    from experiments.harness.training import token_cross_entropy
    from experiments.studies.transformers.decoder import load_text

    out, cfg, res = hf_run
    data = load_text(cfg)
    bs = cfg["eval_batch_size"]
    layers = "model.model.layers"
    assert set(res["model"]["layers"]) == {f"{layers}.{i}.{m}" for i in range(2)
                                           for m in ("self_attn", "mlp.gate_proj")}
    base = _model(out / "baseline/checkpoint.pt")
    got = evaluate(base, data.val, batch_size=bs, loss_fn=token_cross_entropy)
    assert res["baseline"]["val_loss"] == pytest.approx(got["loss"], rel=1e-6)
    rows = _rows(out / "pruning.csv")
    assert [(r["scorer"], float(r["fraction"])) for r in rows] == [
        (s, f) for s in ("mrs", "mrp") for f in (0.3, 0.7)]
    for r in res["grid"]:
        cell = out / oneshot.cell_name(r["scorer"], r["fraction"])
        saved = load_checkpoint(cell / "pruned.pt")
        for stage, path in (("pruned", "pruned.pt"), ("recovered", "checkpoint.pt")):
            m = _model(cell / path)      # rebuilt by name, resized to the saved shapes
            for i, layer in enumerate(m.model.model.layers):
                removed = len(saved["units"].get(f"{layers}.{i}.self_attn", []))
                assert layer.self_attn.q_proj.out_features == 4 * (4 - removed)
                assert layer.self_attn.num_key_value_groups * layer.self_attn.k_proj.out_features \
                    == layer.self_attn.q_proj.out_features
            got = evaluate(m, data.val, batch_size=bs, loss_fn=token_cross_entropy)
            assert r[f"val_loss_{stage}"] == pytest.approx(got["loss"], rel=1e-6)
    spearman = _rows(out / "spearman.csv")
    assert {(s["layer"], s["scorer"]) for s in spearman} == {
        (f"{layers}.{i}.{m}", "mrs") for i in range(2) for m in ("self_attn", "mlp.gate_proj")}
