"""A per-process pool of LoRA-wrapped models, so that a message does not rebuild the model it works on.

Every message an organization answers (train, evaluate, gradient, HVP, local solve, forget) works on
the frozen base model with a LoRA adapter loaded with the state the server sent. Building that model
(deep copy of the base, ``get_peft_model``, seeded init of the factors) costs about as much as a few
training steps of the embedded default model, and an erasure by ``influence`` or ``subtract`` is a
handful of short messages: rebuilding per message was the largest fixed cost of approximate erasure
(``benchmarks/RESULTS.md``). The pool keeps the wrapped models a process has built and lends them out:

* :func:`borrow` yields a model whose LoRA factors are exactly ``state``, with no gradients, no
  hooks and in eval mode, as if freshly wrapped and loaded (callers set train mode themselves, as
  :func:`~fedunlearn.training.local.fit_local` does). A borrowed model is never shared: two threads
  (a warm deployment executor serving several SuperNodes) borrow two models.
* Keys are everything that determines the wrapped model: base model path, device, thread count and
  the LoRA spec. The LoRA factors come from the message, so two organizations on one process (a
  Ray actor hosting several simulated organizations) share models without sharing any state.
* A model that leaves the pool in an unknown state (Opacus attached per-sample hooks for DP-SGD,
  or a call raised) is checked before it goes back, and dropped if anything is left on it.

Where it helps: any process that answers several messages, i.e. a Ray actor of Flower's simulation
engine and the in-process grid. Not in a deployment: there every ClientApp task runs in its own
forked process (:mod:`fedunlearn.deploy.warm`), so a pooled model lives for one message only.

Memory: an idle model is a full copy of the base model held between messages (before the pool,
that copy lived only while a message ran). :data:`MAX_IDLE` copies at most are kept per key: 1 by
default, set by the environment variable ``FEDUNLEARN_MODEL_POOL`` (``0`` turns pooling off, the old
behaviour, for a base model too large to hold twice).
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping

import torch
from torch import nn

from fedunlearn.errors import ConfigError
from fedunlearn.models import BaseModel, LoraSpec, set_lora_state, wrap_lora

__all__ = ["MAX_IDLE", "borrow", "build", "clear", "idle_count"]

def _max_idle() -> int:
    raw = os.environ.get("FEDUNLEARN_MODEL_POOL", "1")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"FEDUNLEARN_MODEL_POOL = {raw!r}: expected an int >= 0 (idle models kept per process; "
                          "0 = build a fresh model for every message)")
    return value


#: Idle models kept per key (``FEDUNLEARN_MODEL_POOL``, read at import); more concurrent borrowers build
#: extra models, dropped when returned.
MAX_IDLE = _max_idle()

_lock = threading.Lock()
_idle: dict[Hashable, list[nn.Module]] = {}


def build(base: BaseModel, spec: LoraSpec) -> nn.Module:
    """A fresh copy of ``base`` wrapped with LoRA (the base itself is never modified)."""
    fresh = copy.copy(base)
    fresh.model = copy.deepcopy(base.model)
    return wrap_lora(fresh, spec, seed=0, inplace=True)  # already a copy: not twice


def _clean(model: nn.Module) -> bool:
    """Whether ``model`` carries nothing from its last use but its weights (no hooks, no grad samples)."""
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
            return False
        if getattr(module, "_full_backward_hooks", None) or getattr(module, "_backward_pre_hooks", None):
            return False
    return not any(hasattr(p, "grad_sample") or hasattr(p, "_forward_counter") for p in model.parameters())


def _reset(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    for p in model.parameters():
        p.grad = None
    set_lora_state(model, state)
    model.eval()


@contextlib.contextmanager
def borrow(key: Hashable, base: BaseModel, spec: LoraSpec, state: Mapping[str, torch.Tensor],
           *, build: Callable[[BaseModel, LoraSpec], nn.Module] = build) -> Iterator[nn.Module]:
    """Lend a LoRA-wrapped copy of ``base`` loaded with ``state``; it goes back to the pool afterwards.

    Parameters
    ----------
    key : Hashable
        Everything that determines the wrapped model apart from its LoRA factors (base path, device,
        threads, ``spec``); models are only lent to borrowers with the same key.
    base : BaseModel
        The frozen base, copied (never modified) when the pool has no idle model for ``key``.
    spec : LoraSpec
    state : mapping of str to torch.Tensor
        The LoRA factors to load (validated strictly by :func:`~fedunlearn.models.set_lora_state`).

    Yields
    ------
    torch.nn.Module
        The peft model; use it only inside the ``with`` block. Results to keep must be copied out
        (:func:`~fedunlearn.models.get_lora_state` does).
    """
    with _lock:
        free = _idle.get(key)
        model = free.pop() if free else None
    if model is None:
        model = build(base, spec)
    _reset(model, state)  # raises on a bad state: the model is then simply not returned to the pool
    yield model
    for p in model.parameters():  # only after a clean exit; an exception drops the model
        p.grad = None
    if _clean(model):
        with _lock:
            free = _idle.setdefault(key, [])
            if len(free) < MAX_IDLE:
                free.append(model)


def idle_count(key: Hashable | None = None) -> int:
    """Idle models in the pool (for ``key``, or in all)."""
    with _lock:
        return len(_idle.get(key, ())) if key is not None else sum(len(v) for v in _idle.values())


def clear() -> None:
    """Drop every idle model (tests; frees memory after a run)."""
    with _lock:
        _idle.clear()
