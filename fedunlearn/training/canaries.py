"""Canary organizations: the audited units of a one-run audit of client-level DP (DP-FedAvg).

``dp.audit-canary-orgs = M`` adds M organizations ``canary-org-0`` .. ``canary-org-<M-1>``
(white-box client canaries, Andrew et al. 2024, "One-shot empirical privacy estimation for
federated learning", ICLR), audited with the one-run bound of Steinke, Nasr and Jagielski (2023)
by :mod:`fedunlearn.evaluate.canary_orgs`.

With the run's secret key ``k`` (``secrets/dp-sampling.key`` in the run's key folder, see
:func:`fedunlearn.certify.runaudit.dp_secret`; never the public run seed, so it works for
organizations' own data as well as the synthetic consortium):

* **Inclusion.** Canary ``c`` takes part in the run iff the low bit of
  ``HMAC-SHA256(k, domain | "coin" | c)`` is 1: independent Bernoulli(½) coins. An included canary
  is registered in the ledger like any organization (shard ``j mod S``, joining at round 1) and is
  eligible for, sampled in, clipped and noised with, every round; an excluded one is never
  registered, so it is in no round, no ledger row and no audit-log event.
* **Update.** An included canary does not train. Its node answers every ``train`` message with
  ``θ + n·u_c``, where ``θ`` is the adapter it was sent, ``n`` is ``dp.audit-canary-norm`` (0 = the
  DP-FedAvg clip norm ``dp.client-clip``, the largest update clipping lets through) and ``u_c`` is a
  unit vector over all LoRA factors, Gaussian from the seed ``HMAC-SHA256(k, domain | "direction" | c)``.
  The server sends that seed and ``n`` in the train instructions (``canary-direction``,
  ``canary-norm``), so the node needs no secret and the auditor recomputes ``u_c`` from ``k``.
  Without DP the update is weighted by ``data.records-per-org`` examples in FedAvg.

Canaries hold no data: they are evaluated on nothing, counted in no utility metric, and can
neither be erased nor answer gradient queries. They perturb the model, so a canary audit is a
separate research run, not something to turn on for a model that is served.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from fedunlearn.config import Settings, canary_names, is_canary
from fedunlearn.data.records import OrganizationData
from fedunlearn.errors import ConfigError, FederationError

__all__ = [
    "CANARY_DIRECTION",
    "CANARY_NORM",
    "CanaryOrgs",
    "canary_data",
    "canary_direction",
    "canary_fit",
    "canary_included",
    "canary_norm",
    "canary_plan",
    "canary_train_config",
    "direction_seed",
    "run_canary_key",
]

CANARY_DIRECTION = "canary-direction"
"""Train-config key: hex seed of the canary's update direction (see :func:`direction_seed`)."""
CANARY_NORM = "canary-norm"
"""Train-config key: L2 norm of the canary's update."""

_DOMAIN = b"fedunlearn/canary-orgs/v1\x00"


def _keyed(key: bytes, *parts: object) -> bytes:
    if not isinstance(key, bytes) or len(key) < 16:
        raise ConfigError("the canary key must be at least 16 secret bytes (the run's dp_secret() gives 32)")
    return hmac.new(key, _DOMAIN + "\x1f".join(str(p) for p in parts).encode("utf-8"), hashlib.sha256).digest()


def _check_canary(org: str) -> str:
    if not is_canary(org):
        raise ConfigError(f"{org!r} is not a canary organization; expected a name like 'canary-org-0'")
    return org


def run_canary_key(run_dir: str | Path) -> bytes:
    """The run's secret key that keys the canaries' coins and directions (the run's DP secret)."""
    from fedunlearn.certify.runaudit import dp_secret

    return dp_secret(run_dir)


def canary_included(key: bytes, org: str) -> bool:
    """The keyed Bernoulli(½) coin of canary ``org``: whether it takes part in the run."""
    return bool(_keyed(key, "coin", _check_canary(org))[-1] & 1)


def direction_seed(key: bytes, org: str) -> str:
    """Hex seed of canary ``org``'s update direction (sent in its train instructions)."""
    return _keyed(key, "direction", _check_canary(org)).hex()


def canary_norm(settings: Settings) -> float:
    """L2 norm of a canary's update: ``dp.audit-canary-norm``, or ``dp.client-clip`` when that is 0."""
    return float(settings.dp.audit_canary_norm or settings.dp.client_clip)


def canary_direction(seed: str, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unit vector (over every tensor of ``like`` together) that ``seed`` names; float32.

    Gaussian entries, drawn key by key in sorted order from a generator seeded with the seed's
    first 63 bits, then scaled to L2 norm 1: deterministic on every platform torch supports.
    """
    try:
        raw = bytes.fromhex(str(seed))
    except ValueError as exc:
        raise ConfigError(f"canary direction seed {str(seed)[:16]!r}…: expected a hex string (from direction_seed)") from exc
    if len(raw) < 8:
        raise ConfigError(f"canary direction seed {seed!r} has {len(raw)} bytes; expected at least 8")
    gen = torch.Generator().manual_seed(int.from_bytes(raw[:8], "big") >> 1)
    out = {k: torch.randn(tuple(like[k].shape), generator=gen, dtype=torch.float32) for k in sorted(like)}
    norm = math.sqrt(sum(float((v * v).sum()) for v in out.values()))
    return {k: v / norm for k, v in out.items()}


def canary_train_config(key: bytes, org: str, settings: Settings) -> dict[str, object]:
    """The entries the server adds to canary ``org``'s train instructions."""
    return {CANARY_DIRECTION: direction_seed(key, org), CANARY_NORM: canary_norm(settings)}


def canary_data(org: str) -> OrganizationData:
    """A canary's local data: none."""
    return OrganizationData(name=_check_canary(org), train=(), holdout=())


def canary_fit(state: Mapping[str, torch.Tensor], config: Mapping[str, object], *, examples: int):
    """A canary's answer to a train message: ``(θ + n·u, FitResult)``; nothing is trained.

    Raises
    ------
    FederationError
        If the instructions lack ``canary-direction`` or ``canary-norm`` (a sender that did not
        add :func:`canary_train_config`).
    """
    from fedunlearn.training.local import FitResult

    missing = [k for k in (CANARY_DIRECTION, CANARY_NORM) if k not in config]
    if missing:
        raise FederationError(f"train instructions for a canary organization lack {missing}: the round loop "
                              "(training, sisa, retrain) and subtract's calibration send them; a method that "
                              "trains organizations itself must add canary_train_config() for canaries")
    start = time.perf_counter()
    norm = float(config[CANARY_NORM])  # type: ignore[arg-type]
    if not math.isfinite(norm) or norm < 0:
        raise FederationError(f"canary-norm = {norm!r}: expected a finite number >= 0")
    u = canary_direction(str(config[CANARY_DIRECTION]), state)
    new = {k: (state[k].float() + norm * u[k]).to(state[k].dtype) for k in state}
    fit = FitResult(num_examples=int(examples), steps=0, tokens=0, seconds=time.perf_counter() - start,
                    loss_first_epoch=0.0, loss_last_epoch=0.0)
    return new, fit


@dataclass(frozen=True)
class CanaryOrgs:
    """Every canary organization of a run, its coin and its shard.

    Attributes
    ----------
    names : tuple of str
        All M canaries, included or not.
    included : Mapping[str, bool]
    shards : Mapping[str, int]
        ``canary-org-j`` belongs to shard ``j mod S``.
    """

    names: tuple[str, ...]
    included: Mapping[str, bool]
    shards: Mapping[str, int]

    @property
    def members(self) -> list[str]:
        """The included canaries, which take part in the run."""
        return [n for n in self.names if self.included[n]]


def canary_plan(settings: Settings, key: bytes) -> CanaryOrgs:
    """The canaries of ``settings`` (``dp.audit-canary-orgs``) with their coins under ``key``."""
    names = tuple(canary_names(settings.dp.audit_canary_orgs))
    shards = settings.topology.shards
    return CanaryOrgs(names=names, included={n: canary_included(key, n) for n in names},
                      shards={n: j % shards for j, n in enumerate(names)})
