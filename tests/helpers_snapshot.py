"""Exact snapshots of a model and its optimizer, to prove nothing changed.

``take(model, optimizer)`` records everything an in-place operation could
touch; ``assert_unchanged(snapshot, model, optimizer)`` compares bit for bit
and names the first difference. Used by the error tests ("validate first, then
mutate": an error leaves model and optimizer as they were) and usable for
"scorers never change the model".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.modules.module as module_mod

ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "num_features")
_MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                      "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
                      "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks",
                      "_global_backward_hooks", "_global_backward_pre_hooks")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor (so -0.0 != 0.0 and NaN payloads count)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).clone()


def same_bits(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
                and torch.equal(bits(a), bits(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(
            same_bits(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _copy(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, (list, tuple)):
        return type(v)(_copy(x) for x in v)
    return v


@dataclass
class Snapshot:
    state_dict: dict[str, torch.Tensor]
    attrs: dict[str, dict[str, Any]]
    modules: dict[str, type]
    params: dict[str, tuple[int, tuple[int, ...]]]
    param_ids: set[int]
    grads: dict[str, torch.Tensor | None]
    training: dict[str, bool]
    plain_attrs: dict[str, set[str]]
    hooks: dict[str, dict[str, tuple]]
    global_hooks: dict[str, tuple]
    opt_state: dict[int, dict[str, Any]] | None
    opt_groups: list[dict[str, Any]] | None


def take(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Snapshot:
    named = dict(model.named_modules())
    opt_state = opt_groups = None
    if optimizer is not None:
        opt_state = {id(p): {k: _copy(v) for k, v in s.items()}
                     for p, s in optimizer.state.items()}
        opt_groups = [{"ids": [id(p) for p in g["params"]],
                       "shapes": [tuple(p.shape) for p in g["params"]],
                       **{k: _copy(v) for k, v in g.items() if k != "params"}}
                      for g in optimizer.param_groups]
    return Snapshot(
        state_dict={k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        attrs={n: {a: getattr(m, a) for a in ATTRS if hasattr(m, a)} for n, m in named.items()},
        modules={n: type(m) for n, m in named.items()},
        params={n: (id(p), tuple(p.shape)) for n, p in model.named_parameters()},
        param_ids={id(p) for p in model.parameters()},
        grads={n: None if p.grad is None else p.grad.detach().clone()
               for n, p in model.named_parameters()},
        training={n: m.training for n, m in named.items()},
        plain_attrs={n: {k for k, v in vars(m).items() if isinstance(v, torch.Tensor)}
                     for n, m in named.items()},
        hooks={n: {h: tuple(getattr(m, h, {}).keys()) for h in _MODULE_HOOK_DICTS}
               for n, m in named.items()},
        global_hooks={h: tuple(getattr(module_mod, h, {}).keys()) for h in _GLOBAL_HOOK_DICTS},
        opt_state=opt_state,
        opt_groups=opt_groups,
    )


def assert_unchanged(before: Snapshot, model: nn.Module,
                     optimizer: torch.optim.Optimizer | None = None) -> None:
    """Assert that ``model`` and ``optimizer`` are exactly as in ``before``."""
    after = take(model, optimizer)
    assert after.modules == before.modules, "the set or types of modules changed"
    assert after.state_dict.keys() == before.state_dict.keys(), (
        f"state_dict keys changed: {sorted(after.state_dict.keys() ^ before.state_dict.keys())}")
    for k, v in before.state_dict.items():
        assert same_bits(after.state_dict[k], v), f"state_dict[{k!r}] changed"
    assert after.attrs == before.attrs, "in/out features, channels or num_features changed"
    assert after.params == before.params, "parameter objects or shapes changed"
    assert after.param_ids == before.param_ids, "the set of parameter objects changed"
    for k, g in before.grads.items():
        assert same_bits(after.grads[k], g) if g is not None else after.grads[k] is None, (
            f"grad of {k!r} changed")
    assert after.training == before.training, "train/eval mode of some module changed"
    assert after.plain_attrs == before.plain_attrs, "plain tensor attributes were added"
    assert after.hooks == before.hooks, "module hooks were left behind or removed"
    assert after.global_hooks == before.global_hooks, "global module hooks were left behind"
    if optimizer is None:
        return
    assert after.opt_state.keys() == before.opt_state.keys(), "optimizer state keys changed"
    for pid, state in before.opt_state.items():
        new = after.opt_state[pid]
        assert new.keys() == state.keys(), "optimizer per-parameter state keys changed"
        for k, v in state.items():
            assert same_bits(new[k], v), f"optimizer state {k!r} changed"
    assert len(after.opt_groups) == len(before.opt_groups), "param_groups were added or removed"
    for g_new, g_old in zip(after.opt_groups, before.opt_groups):
        assert len(g_new["ids"]) == len(g_old["ids"]), "a param group changed length"
        assert g_new.keys() == g_old.keys()
        for k in g_old:
            assert same_bits(g_new[k], g_old[k]), f"param group entry {k!r} changed"
