"""Client-level DP-FedAvg (McMahan, Ramage, Talwar & Zhang, ICLR 2018) for one shard's round.

With head adapter θ, eligible organizations E (members of the shard this round), sample rate q
and clipping norm C, one round releases::

    S      = Poisson sample of E: each organization independently with probability q
    Δ_k    = θ_k − θ                           (organization k's update, flattened LoRA factors)
    Δ̃_k    = Δ_k · min(1, C / ‖Δ_k‖₂)          (clipped)
    θ'     = θ + (Σ_{k∈S} Δ̃_k + N(0, (z C)² I)) / (q |E|)

The fixed denominator q|E| (the expected number of participants) keeps the sensitivity of the
noised sum at C under adding or removing one organization, so each round is the subsampled
Gaussian mechanism and :mod:`fedunlearn.certify.accounting` composes it over the rounds each
organization was eligible. Updates are weighted equally (num-examples weighting would let one
organization's influence exceed C).

Randomness. The sample and the noise must stay secret, so they never come from the public run
seed. With the run's secret DP key ``k`` (``secrets/dp-sampling.key``, see
:meth:`fedunlearn.certify.RunAudit.dp_secret`) they are keyed: organization ``o`` is in round ``r`` of
shard ``s`` iff ``HMAC-SHA256(k, "sample" | s | r | o) / 2^64 < q`` (one independent draw per
organization, so leaving one out never changes the others), and the noise generator is seeded
from ``HMAC-SHA256(k, "noise" | s | r)``. A retrain of a shard during an erasure therefore replays
the same sample (less the subject) and the same noise, which keeps SISA erasure exact under DP,
while anyone without ``k`` cannot predict either. Without a key both come from OS randomness.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedunlearn.config import DpSettings
from fedunlearn.errors import ConfigError
from fedunlearn.training.dp import secret_generator

__all__ = ["DPRound", "clip_update", "dp_fedavg", "keyed_generator", "keyed_poisson_sample", "poisson_sample"]

_DOMAIN = b"fedunlearn/dp-fedavg/v1\x00"


def _keyed(key: bytes, *parts: object) -> bytes:
    if not isinstance(key, bytes) or len(key) < 16:
        raise ConfigError("the DP key must be at least 16 secret bytes (RunAudit.dp_secret() gives 32)")
    return hmac.new(key, _DOMAIN + "\x1f".join(str(p) for p in parts).encode("utf-8"), hashlib.sha256).digest()


def keyed_poisson_sample(eligible: Sequence[str], rate: float, key: bytes, *, shard: int, rnd: int) -> list[str]:
    """Each of ``eligible`` with probability ``rate``, drawn from the secret ``key`` and (shard, round, name).

    The same key, shard and round always select the same organizations, whoever else is eligible.
    """
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"client sample rate {rate!r}: expected 0 < rate <= 1")
    return [org for org in eligible
            if int.from_bytes(_keyed(key, "sample", shard, rnd, org)[:8], "big") < rate * 2**64]


def keyed_generator(key: bytes, *, shard: int, rnd: int) -> torch.Generator:
    """The noise generator of round ``rnd`` of ``shard``, seeded with 63 bits keyed by ``key``."""
    return torch.Generator().manual_seed(int.from_bytes(_keyed(key, "noise", shard, rnd)[:8], "big") >> 1)


def poisson_sample(eligible: Sequence[str], rate: float, rng: torch.Generator | None = None, *,
                   key: bytes | None = None, shard: int = 0, rnd: int = 0) -> list[str]:
    """Each of ``eligible`` independently with probability ``rate`` (order kept).

    With the run's secret DP ``key`` the draw is :func:`keyed_poisson_sample` (reproducible for
    a retrain); otherwise it comes from ``rng`` (default: OS randomness).
    """
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"client sample rate {rate!r}: expected 0 < rate <= 1")
    if rate == 1.0:
        return list(eligible)
    if key is not None:
        return keyed_poisson_sample(eligible, rate, key, shard=shard, rnd=rnd)
    rng = rng if rng is not None else secret_generator()
    draws = torch.rand(len(eligible), generator=rng)
    return [org for org, u in zip(eligible, draws.tolist()) if u < rate]


def clip_update(
    update: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], clip: float
) -> tuple[dict[str, torch.Tensor], float]:
    """Return (the clipped delta ``update - base``, its norm before clipping)."""
    if set(update) != set(base):
        raise ConfigError(
            f"update keys differ from the head adapter's ({sorted(set(update) ^ set(base))[:3]}); "
            "expected the same LoRA state keys"
        )
    delta = {k: update[k].float() - base[k].float() for k in base}
    norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
    factor = min(1.0, clip / (norm + 1e-12))
    return {k: d * factor for k, d in delta.items()}, norm


@dataclass
class DPRound:
    """What one DP-FedAvg aggregation did (the accountant needs ``eligible``, ``z``, ``q``)."""

    state: dict[str, torch.Tensor]
    eligible: int
    sampled: int
    noise_multiplier: float
    sample_rate: float
    clip: float
    norms: list[float] = field(default_factory=list)

    @property
    def clipped(self) -> int:
        return sum(n > self.clip for n in self.norms)


def dp_fedavg(
    base: Mapping[str, torch.Tensor],
    updates: Sequence[Mapping[str, torch.Tensor]],
    *,
    eligible: int,
    dp: DpSettings,
    rng: torch.Generator | None = None,
) -> DPRound:
    """Aggregate the sampled organizations' ``updates`` with clipping and Gaussian noise.

    Parameters
    ----------
    base : mapping
        The shard's head adapter θ that every update started from.
    updates : sequence of mappings
        The sampled organizations' new adapters θ_k (possibly none).
    eligible : int
        |E|, the number of organizations that could have been sampled (>= 1).
    dp : DpSettings
        ``client_noise_multiplier`` z, ``client_clip`` C, ``client_sample_rate`` q.
    rng : torch.Generator, optional
        Noise source (default: a secret generator); tests pass a seeded one.
    """
    if eligible < 1 or eligible < len(updates):
        raise ConfigError(f"eligible = {eligible} with {len(updates)} updates: expected eligible >= max(1, updates)")
    rng = rng if rng is not None else secret_generator()
    clip, z, q = dp.client_clip, dp.client_noise_multiplier, dp.client_sample_rate
    total = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in base.items()}
    norms = []
    for update in updates:
        delta, norm = clip_update(update, base, clip)
        norms.append(norm)
        for k in total:
            total[k] += delta[k]
    denominator = q * eligible
    state = {}
    for k in sorted(base):
        noise = torch.normal(0.0, z * clip, size=tuple(total[k].shape), generator=rng)
        state[k] = (base[k].float() + (total[k] + noise) / denominator).to(base[k].dtype)
    return DPRound(state=state, eligible=eligible, sampled=len(updates), noise_multiplier=z, sample_rate=q,
                   clip=clip, norms=norms)
