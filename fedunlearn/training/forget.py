"""Record-level forgetting on one organization: gradient ascent, GradDiff and NPO on its LoRA factors.

An organization that stays in the federation asks to forget some of its own records (the *forget
set*); its other training records are the *retain set*. Three objectives, minimized with AdamW:

``ga``        ``−L_f``: gradient ascent on the forget set (Jang et al. 2023; the open-unlearning
              ``GradAscent`` baseline). Unbounded below: it forgets quickly and then damages everything.
``graddiff``  ``−L_f + γ L_r``: ascent on the forget set, descent on the retain set (Liu et al.,
              "Continual Learning and Private Unlearning", 2022).
``npo``       ``−(2/β) E_f[log σ(−β log(π_θ(y|x) / π_ref(y|x)))] + γ KL(π_ref ‖ π_θ)`` on the retain set:
              Negative Preference Optimization (Zhang et al., "Negative Preference Optimization: From
              Catastrophic Collapse to Effective Unlearning", COLM 2024), with the KL regularizer to the
              model before forgetting (``π_ref``) on the retained records. Its loss is bounded, so it
              degrades far more slowly than gradient ascent.

``L`` is the mean per-sequence token loss; ``log π(y|x)`` is a sequence's summed token
log-likelihood. The ``sisa`` alternative (retrain the shard without the records) is exact and lives
in :mod:`fedunlearn.unlearning.records`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.errors import ConfigError, DataError
from fedunlearn.training.local import EncodedData, evaluate_local

__all__ = ["FORGET_METHODS", "ForgetResult", "forget_local"]

FORGET_METHODS = ("ga", "graddiff", "npo")
"""Local forgetting objectives accepted by :func:`forget_local`."""


@dataclass(frozen=True)
class ForgetResult:
    """What one local forgetting pass did (losses are token-weighted means, nats)."""

    method: str
    steps: int
    seconds: float
    num_forget: int
    num_retain: int
    forget_loss_before: float
    forget_loss_after: float
    retain_loss_before: float
    retain_loss_after: float


def _token_logp(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of every position, the target log-likelihoods and the target mask."""
    B, T = ids.shape
    position_ids = torch.arange(T, device=ids.device).unsqueeze(0).expand(B, T)  # [B, T]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits.float()  # [B, T, V]
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # [B, T-1, V]; position t predicts token t+1
    targets = ids[:, 1:]  # [B, T-1]
    tmask = mask[:, 1:].to(logp.dtype)  # [B, T-1]
    target_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * tmask  # [B, T-1]
    return logp, target_logp, tmask


def _batch(data: EncodedData, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mask = data.attention_mask[idx]
    width = int(mask.sum(dim=1).max())
    return data.input_ids[idx, :width].to(device), mask[:, :width].to(device)


def forget_local(
    model: nn.Module,
    forget: EncodedData,
    retain: EncodedData | None,
    *,
    method: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    beta: float = 0.1,
    retain_weight: float = 1.0,
    max_grad_norm: float = 1.0,
) -> ForgetResult:
    """Make ``model`` forget the records in ``forget`` (in place, LoRA factors only).

    Parameters
    ----------
    model : peft.PeftModel
        The shard's adapter on the frozen base, as it is before forgetting (also the NPO reference).
    forget, retain : EncodedData
        The records to forget; the organization's other training records (``None`` or empty for
        ``ga``; required by ``graddiff`` and ``npo``).
    method : {"ga", "graddiff", "npo"}
    epochs : int
        Passes over the forget set; one step per forget batch (a retain batch is drawn alongside).
    batch_size, lr, seed
        AdamW step size; a seeded generator orders the batches (deterministic on CPU).
    beta : float
        NPO's inverse temperature β (Zhang et al. 2024 use 0.1).
    retain_weight : float
        γ, the weight of the retain term.
    max_grad_norm : float
        Gradient clipping (ascent on an unbounded loss otherwise explodes in a few steps).

    Returns
    -------
    ForgetResult
    """
    if method not in FORGET_METHODS:
        raise ConfigError(f"forgetting method {method!r} is unknown: expected one of {list(FORGET_METHODS)}")
    if epochs < 1 or batch_size < 1 or not lr > 0 or not beta > 0 or retain_weight < 0:
        raise ConfigError(
            f"epochs={epochs}, batch_size={batch_size}, lr={lr}, beta={beta}, retain_weight={retain_weight}: "
            "expected epochs >= 1, batch_size >= 1, lr > 0, beta > 0 and retain_weight >= 0"
        )
    if len(forget) == 0:
        raise DataError("the forget set is empty: name at least one of the organization's training record ids")
    uses_retain = method != "ga" and retain_weight > 0
    if uses_retain and (retain is None or len(retain) == 0):
        raise DataError(f"method {method!r} needs retained records but the organization has none left; use 'ga'")
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    reference = None
    if method == "npo":  # π_ref: the model before forgetting, frozen
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    f_before = evaluate_local(model, forget).loss
    r_before = evaluate_local(model, retain).loss if retain is not None and len(retain) else float("nan")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.eval()  # no dropout noise while unlearning
    steps = 0
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(forget), generator=gen)
        for i in range(0, len(forget), batch_size):
            ids, mask = _batch(forget, order[i : i + batch_size], device)
            _, tlp, tmask = _token_logp(model, ids, mask)
            seq_logp = tlp.sum(dim=1)  # [b] log π_θ(y|x)
            if method == "npo":
                with torch.no_grad():
                    ref_logp = _token_logp(reference, ids, mask)[1].sum(dim=1)  # [b]
                loss = -(2.0 / beta) * nn.functional.logsigmoid(-beta * (seq_logp - ref_logp)).mean()
            else:  # ascent on the mean token loss: −L_f = +mean log-likelihood
                loss = (seq_logp / tmask.sum(dim=1).clamp_min(1)).mean()
            if uses_retain:
                ridx = torch.randint(len(retain), (min(batch_size, len(retain)),), generator=gen)
                rids, rmask = _batch(retain, ridx, device)
                logp, rtlp, rtmask = _token_logp(model, rids, rmask)
                if method == "npo":  # token-level KL(π_ref ‖ π_θ) on retained records
                    with torch.no_grad():
                        ref = _token_logp(reference, rids, rmask)[0]  # [b, T-1, V]
                    kl = (ref.exp() * (ref - logp)).sum(-1)  # [b, T-1]
                    retain_term = (kl * rtmask).sum() / rtmask.sum().clamp_min(1)
                else:
                    retain_term = -(rtlp.sum(dim=1) / rtmask.sum(dim=1).clamp_min(1)).mean()
                loss = loss + retain_weight * retain_term
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            steps += 1
    return ForgetResult(
        method=method, steps=steps, seconds=time.perf_counter() - start, num_forget=len(forget),
        num_retain=0 if retain is None else len(retain), forget_loss_before=f_before,
        forget_loss_after=evaluate_local(model, forget).loss, retain_loss_before=r_before,
        retain_loss_after=evaluate_local(model, retain).loss if retain is not None and len(retain) else float("nan"),
    )
