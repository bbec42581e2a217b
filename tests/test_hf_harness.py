"""A pruned ``transformers`` model saved as a state dict, loaded with ``weights_only=True`` into a
freshly built model resized by the checkpoint helper (:func:`fit_to_state_dict`): identical
logits, and generation with the cache still works."""

from __future__ import annotations

import io

import pytest
import torch

pytest.importorskip("transformers")

from test_hf import CASES, batch, logits  # noqa: E402

from experiments.harness.checkpoint import fit_to_state_dict  # noqa: E402
from pruners import remove_units  # noqa: E402

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("case", list(CASES))
def test_a_pruned_model_reloads_with_weights_only_and_gives_identical_logits(case):
    build, units = CASES[case]
    model = build()
    remove_units(model, units, replacement="mean", data=[batch(1)])
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = build()                      # the architecture as built, then fitted to the shapes
    fit_to_state_dict(fresh, state)
    fresh.load_state_dict(state)
    ids = batch(3)[0]
    assert torch.equal(logits(fresh, ids), logits(model, ids))
    prompt = ids[:2, :4]
    with torch.no_grad():
        a = model.model.generate(prompt, max_new_tokens=6, do_sample=False)
        b = fresh.model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert a.tolist() == b.tolist()
