"""Erasing organizations from a federated run.

Methods are registered by lowercase name in :data:`UNLEARNERS`; the built-ins register on import:

========== ========= ==========================================================================
name       guarantee what it does
========== ========= ==========================================================================
``sisa``   exact     roll back the shards that saw the subject, retrain them without it (Flower)
``drop``   exact     S = N: drop the subject's own adapter and recombine (no training)
``retrain`` exact    the reference: retrain every shard from round 0 without the subject
``influence`` empirical one damped Newton step; GIANT local solves in one round (or federated CG)
``subtract`` empirical FedEraser in ΔW space: replay stored history without the subject, K calibrated
``negate`` empirical task-vector negation of the subject's stored contributions (no training)
``ga`` ``graddiff`` ``npo`` empirical record-level: the organization forgets some of its records
``sisa-records`` exact record-level: retrain its shard, the organization without those records
========== ========= ==========================================================================

Add a method: subclass :class:`Unlearner` (or :class:`ReplayUnlearner`), then
``register_unlearner("name", MyUnlearner)``; it must pass ``tests/unlearning/test_contract.py``.
"""

from __future__ import annotations

from fedunlearn.registry import Registry
from fedunlearn.unlearning.base import (
    GUARANTEES,
    Cost,
    EraseRequest,
    Federation,
    UnlearnResult,
    Unlearner,
    check_request,
)
from fedunlearn.unlearning.cost import estimate_full_retrain
from fedunlearn.unlearning.drop import DropUnlearner
from fedunlearn.unlearning.replay import ReplayUnlearner, ShardPlan, pending_erasure
from fedunlearn.unlearning.retrain import RetrainUnlearner
from fedunlearn.unlearning.sisa import SisaUnlearner
from fedunlearn.unlearning.approx import ApproximateUnlearner, ApproxOptions
from fedunlearn.unlearning.influence import InfluenceUnlearner
from fedunlearn.unlearning.records import (
    GradAscentUnlearner,
    GradDiffUnlearner,
    NpoUnlearner,
    RecordSisaUnlearner,
)
from fedunlearn.unlearning.subtract import NegateUnlearner, SubtractUnlearner

__all__ = [
    "ApproxOptions",
    "ApproximateUnlearner",
    "Cost",
    "DropUnlearner",
    "EraseRequest",
    "Federation",
    "GUARANTEES",
    "GradAscentUnlearner",
    "GradDiffUnlearner",
    "InfluenceUnlearner",
    "NegateUnlearner",
    "NpoUnlearner",
    "RecordSisaUnlearner",
    "ReplayUnlearner",
    "RetrainUnlearner",
    "ShardPlan",
    "SisaUnlearner",
    "SubtractUnlearner",
    "UNLEARNERS",
    "UnlearnResult",
    "Unlearner",
    "check_request",
    "estimate_full_retrain",
    "get_unlearner",
    "pending_erasure",
    "register_unlearner",
]

UNLEARNERS: Registry[type[Unlearner]] = Registry("unlearning method")
"""Unlearning methods by name (classes; :func:`get_unlearner` instantiates)."""


def register_unlearner(name: str, cls: type[Unlearner], *, force: bool = False) -> type[Unlearner]:
    """Register an :class:`Unlearner` subclass under ``name`` (duplicate raises unless ``force``)."""
    return UNLEARNERS.register(name, cls, force=force)


def get_unlearner(name: str) -> Unlearner:
    """A fresh instance of the method registered as ``name`` (:class:`UnknownNameError` lists them)."""
    return UNLEARNERS.get(name)()


for _cls in (SisaUnlearner, DropUnlearner, RetrainUnlearner, InfluenceUnlearner, SubtractUnlearner,
             NegateUnlearner, GradAscentUnlearner, GradDiffUnlearner, NpoUnlearner, RecordSisaUnlearner):
    register_unlearner(_cls.name, _cls)
