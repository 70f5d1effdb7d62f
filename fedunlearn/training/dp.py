"""Record-level DP-SGD on an organization's LoRA parameters with Opacus (Abadi et al., CCS 2016).

Each step draws a Poisson sample of the organization's records (each independently with
probability ``q = batch_size / records``), computes every sampled record's gradient of its own
sequence loss (:func:`~fedunlearn.training.local.sequence_losses`, not Hugging Face's token-mean
loss, which couples the records of a batch), clips each to L2 norm ``C = max_grad_norm``, sums
them, adds Gaussian noise ``N(0, (z C)^2 I)`` and divides by the expected batch size ``q n``.
One local epoch is ``ceil(1 / q)`` such steps. Only LoRA parameters are trainable (the base is
frozen), so only they get per-sample gradients (Opacus ``hooks`` mode on the peft model; the
model must be on its device before ``get_peft_model``, which ``wrap_lora`` does: opacus issue
820).

Assumptions behind the (ε, δ) reported for this mechanism (see :mod:`fedunlearn.certify.accounting`):
the sampling and the noise are secret (both come from a generator seeded with 63 bits of OS
randomness, never from the run seed; torch's generator is not a CSPRNG), adjacency is adding or
removing one record, and ε counts every round in which the organization trained. DP fits are
therefore not reproducible, by design.

Budget. The organization knows its record count ``n``, hence the round's mechanism before it
trains: ``q = min(1, batch_size / n)``, ``steps = epochs * ceil(1 / q)``, noise ``z``
(:func:`planned_mechanism`). With ``max_epsilon > 0`` :func:`fit_local_dp` predicts ε after the
round (its earlier rounds plus this one, PRV accountant) and refuses to take a single step when it
would exceed the budget (:class:`PrivacyBudgetError`), the first round included. "Its earlier
rounds" are the larger account of two (:func:`worst_history`): the server's, from the signed audit
log (sent with every ``train`` message), and the node's own (:func:`node_history`, which also counts
updates the server received but never committed). The ClientApp answers a refusal with a
well-formed "budget exhausted" reply, and the coordinator stops addressing the organization; it
also predicts later rounds from the audit log (:func:`fedunlearn.certify.budget.over_budget`).
"""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedunlearn.errors import ConfigError, RunStateError
from fedunlearn.training.local import EncodedData, FitResult, _device_of, sequence_losses

if TYPE_CHECKING:  # Opacus takes seconds to import: loaded by the functions that use it
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

__all__ = [
    "DPFitResult",
    "PrivacyBudgetError",
    "check_round_budget",
    "node_history",
    "planned_mechanism",
    "dp_reply_metrics",
    "dp_step",
    "fit_local_dp",
    "private_optimizer",
    "secret_generator",
    "worst_history",
]


@dataclass(frozen=True)
class DPFitResult(FitResult):
    """A :class:`FitResult` plus the DP-SGD mechanism's parameters (the accountant's input)."""

    noise_multiplier: float = 0.0
    max_grad_norm: float = 0.0
    sample_rate: float = 1.0
    dp_steps: int = 0


class PrivacyBudgetError(RunStateError):
    """A DP round was refused before training: it would take ε over ``dp.max-epsilon``.

    ``epsilon`` is the predicted ε had it trained; ``max_epsilon`` and ``delta`` the budget.
    """

    def __init__(self, message: str, *, epsilon: float = math.inf, max_epsilon: float = 0.0, delta: float = 0.0):
        super().__init__(message)
        self.epsilon, self.max_epsilon, self.delta = epsilon, max_epsilon, delta


def planned_mechanism(records: int, *, batch_size: int, epochs: int) -> tuple[float, int]:
    """(q, steps) of one DP-SGD fit on ``records`` records: ``q = min(1, b / n)``, ``epochs * ceil(1/q)`` steps."""
    if records < 1 or batch_size < 1 or epochs < 1:
        raise ConfigError(f"records={records}, batch_size={batch_size}, epochs={epochs}: expected all >= 1")
    q = min(1.0, batch_size / records)
    return q, epochs * math.ceil(1.0 / q)


def check_round_budget(
    history: Sequence[tuple[float, float, int]], planned: tuple[float, float, int], *, delta: float, max_epsilon: float,
) -> float:
    """ε after ``history`` plus the ``planned`` (z, q, steps) round; PrivacyBudgetError if over ``max_epsilon``.

    ``max_epsilon <= 0`` means no budget (returns the predicted ε all the same).
    """
    from fedunlearn.certify.accounting import epsilon

    eps = epsilon([*history, planned], delta)
    if max_epsilon > 0 and eps > max_epsilon:
        z, q, n = planned
        raise PrivacyBudgetError(
            f"this DP-SGD round (z={z:g}, q={q:.4g}, {n} steps) would raise the organization's record-level ε "
            f"to {eps:.3f} at δ={delta:g}, over dp.max-epsilon = {max_epsilon:g}; it was refused before training: "
            "raise dp.max-epsilon or dp.noise-multiplier, or train fewer local epochs",
            epsilon=eps, max_epsilon=max_epsilon, delta=delta,
        )
    return eps


def worst_history(*histories: Sequence[tuple[float, float, int]], delta: float) -> list[tuple[float, float, int]]:
    """Of several accounts of the same organization's earlier rounds, the one with the largest ε.

    The server's account (the audit log) and the node's own may differ: the node also counts an
    update it sent in a round that never committed; the server also counts rounds the node has
    forgotten (a restarted node). Budget checks use the larger. RDP (fast) ranks them.
    """
    from fedunlearn.certify.accounting import epsilon

    distinct = [list(h) for i, h in enumerate(histories) if list(h) not in [list(g) for g in histories[:i]]]
    if len(distinct) <= 1:
        return distinct[0] if distinct else []
    return max(distinct, key=lambda h: epsilon(h, delta, accountant="rdp"))


def node_history(state: MutableMapping[str, Any]) -> list[tuple[float, float, int]]:
    """The (z, q, steps) of every DP fit this node ran, from its Flower ``context.state`` (see :func:`dp_reply_metrics`)."""
    if "dp-history" not in state:
        return []
    record = state["dp-history"]
    return [(float(z), float(q), int(n)) for z, q, n in zip(record["z"], record["q"], record["steps"])]


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from the OS's randomness (never from the public run seed)."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def private_optimizer(
    model: nn.Module,
    *,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    rng: torch.Generator | None = None,
) -> tuple[GradSampleModule, DPOptimizer]:
    """Attach Opacus per-sample-gradient hooks to ``model`` and build its DP optimizer.

    The hooks live on ``model``'s own sub-modules: keep calling ``model`` (not the returned
    wrapper); call ``wrapper.remove_hooks()`` when done.

    Parameters
    ----------
    model : nn.Module
        A peft LoRA model whose only trainable parameters are the LoRA factors.
    lr, weight_decay : float
        Step size and (AdamW) weight decay.
    noise_multiplier : float
        z >= 0; noise std on the summed clipped gradients is ``z * max_grad_norm``.
    max_grad_norm : float
        C > 0, the per-record L2 clipping norm.
    expected_batch_size : int
        ``q * n``: the fixed denominator of the noisy mean.
    optimizer : {"adamw", "sgd"}
    rng : torch.Generator, optional
        Noise generator (default: :func:`secret_generator`). Tests may pass a seeded one.
    """
    if noise_multiplier < 0 or not math.isfinite(noise_multiplier):
        raise ConfigError(f"noise_multiplier = {noise_multiplier!r}: expected a finite number >= 0")
    if not max_grad_norm > 0:
        raise ConfigError(f"max_grad_norm = {max_grad_norm!r}: expected a number > 0")
    if expected_batch_size < 1:
        raise ConfigError(f"expected_batch_size = {expected_batch_size!r}: expected an int >= 1")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters: wrap it with LoRA first (fedunlearn.models.wrap_lora)")
    bad = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    if bad:
        raise ConfigError(
            f"DP-SGD here trains LoRA parameters only, but {bad[:3]} are trainable too; freeze them "
            "(fedunlearn.models.wrap_lora does)"
        )
    if optimizer == "adamw":
        inner: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        inner = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ConfigError(f"optimizer = {optimizer!r}: expected 'adamw' or 'sgd'")
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    wrapper = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    dp_opt = DPOptimizer(
        inner, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size, loss_reduction="mean",
        generator=rng if rng is not None else secret_generator(_device_of(model)),
    )
    return wrapper, dp_opt


def dp_step(model: nn.Module, opt: DPOptimizer, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One DP-SGD step on a (possibly empty) Poisson batch; returns the per-sequence losses [b].

    An empty batch still takes a step: the update is pure noise, as the mechanism requires.
    """
    opt.zero_grad(set_to_none=True)
    if input_ids.shape[0] == 0:
        for p in opt.params:  # Opacus clips/sums zero samples and adds the noise
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        opt.step()
        return torch.zeros(0)
    losses = sequence_losses(model, input_ids, attention_mask)  # [b]
    with warnings.catch_warnings():  # frozen embeddings: Opacus' hooks fire on outputs, as intended
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        losses.mean().backward()
    missing = [i for i, p in enumerate(opt.params) if getattr(p, "grad_sample", None) is None]
    if missing:  # never let a parameter train without clipping (cf. opacus issue 820)
        raise ConfigError(
            f"{len(missing)} LoRA parameters got no per-sample gradient; the model was probably "
            "wrapped before being moved to its device: build it with fedunlearn.models.wrap_lora"
        )
    opt.step()
    return losses.detach()


def fit_local_dp(
    model: nn.Module,
    data: EncodedData,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    noise_multiplier: float,
    max_grad_norm: float,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    rng: torch.Generator | None = None,
    max_epsilon: float = 0.0,
    delta: float = 1e-5,
    history: Sequence[tuple[float, float, int]] = (),
) -> DPFitResult:
    """Train the LoRA parameters of ``model`` in place with DP-SGD (see the module docstring).

    ``seed`` only seeds dropout; the record sampling and the noise come from ``rng`` (default:
    a secret generator). Returns the mechanism's (z, q, steps) for the accountant.

    With ``max_epsilon > 0``, ε after this fit (``history``: this organization's earlier
    (z, q, steps), plus this fit) is predicted first, and :class:`PrivacyBudgetError` is raised
    before any step when it exceeds ``max_epsilon`` at ``delta``.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"epochs={epochs}, batch_size={batch_size}, lr={lr}: expected epochs >= 1, batch_size >= 1, lr > 0")
    n = len(data)
    q, planned_steps = planned_mechanism(n, batch_size=batch_size, epochs=epochs)
    if max_epsilon > 0:  # refuse before any record is touched
        check_round_budget(history, (float(noise_multiplier), q, planned_steps), delta=delta, max_epsilon=max_epsilon)
    steps_per_epoch = math.ceil(1.0 / q)
    device = _device_of(model)
    rng = rng if rng is not None else secret_generator()
    noise_rng = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=rng)))
    wrapper, opt = private_optimizer(
        model, lr=lr, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=max(1, round(q * n)), weight_decay=weight_decay, optimizer=optimizer, rng=noise_rng,
    )
    torch.manual_seed(seed)
    model.train()
    steps = tokens = 0
    epoch_losses: list[float] = []
    start = time.perf_counter()
    try:
        for _ in range(epochs):
            total, count = 0.0, 0
            for _ in range(steps_per_epoch):
                idx = torch.nonzero(torch.rand(n, generator=rng) < q).flatten()  # Poisson sample
                mask = data.attention_mask[idx]
                width = int(mask.sum(dim=1).max()) if len(idx) else 1
                ids = data.input_ids[idx, :width].to(device)
                mask = mask[:, :width].to(device)
                losses = dp_step(model, opt, ids, mask)
                total += float(losses.sum())
                count += int(losses.numel())
                steps += 1
                tokens += int(mask.sum())
            epoch_losses.append(total / max(count, 1))
    finally:
        opt.zero_grad(set_to_none=True)
        wrapper.remove_hooks()
        for p in model.parameters():  # leave no Opacus attributes behind on the peft model
            for attr in ("grad_sample", "summed_grad", "_forward_counter"):
                if hasattr(p, attr):
                    delattr(p, attr)
    model.eval()
    return DPFitResult(
        num_examples=n, steps=steps, tokens=tokens, seconds=time.perf_counter() - start,
        loss_first_epoch=epoch_losses[0], loss_last_epoch=epoch_losses[-1],
        noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm), sample_rate=q, dp_steps=steps,
    )


def dp_reply_metrics(fit: DPFitResult, state: MutableMapping[str, Any], *, delta: float) -> dict[str, float]:
    """Train-reply metrics of a DP fit, with this node's cumulative record-level ε.

    ``state`` is the node's persistent Flower ``context.state`` (a RecordDict): the history of
    (z, q, steps) of every DP fit this node ran is kept there under ``dp-history``, and ε at
    ``delta`` is recomputed over all of it (PRV). The coordinator keeps its own account from the
    audit log; this number lets the organization watch its budget itself.
    """
    from flwr.app import ConfigRecord

    from fedunlearn.certify.accounting import epsilon

    history = [*node_history(state), (float(fit.noise_multiplier), float(fit.sample_rate), int(fit.dp_steps))]
    state["dp-history"] = ConfigRecord({"z": [h[0] for h in history], "q": [h[1] for h in history],
                                        "steps": [h[2] for h in history]})
    eps = epsilon(history, delta)
    return {
        "dp-noise-multiplier": float(fit.noise_multiplier), "dp-max-grad-norm": float(fit.max_grad_norm),
        "dp-sample-rate": float(fit.sample_rate), "dp-steps": int(fit.dp_steps),
        "dp-epsilon": eps if math.isfinite(eps) else 1e300, "dp-delta": float(delta),
    }
