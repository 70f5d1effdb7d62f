"""What an evaluation of an erasure measures and how much it spends (:class:`EvaluationOptions`).

Apart from :mod:`~fedunlearn.evaluate.suite` so that the pre-erasure capture
(:mod:`~fedunlearn.evaluate.before`), which the suite reads, can use it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.errors import ConfigError
from fedunlearn.evaluate._common import check_fraction, check_positive_int

__all__ = ["EvaluationOptions"]


@dataclass(frozen=True)
class EvaluationOptions:
    """What an evaluation measures and how much it spends.

    Attributes
    ----------
    retrain_seeds : int, default 3
        Retrains without the subject (seeds ``run.seed + k``); at least 1, 3 for a spread.
    baseline_canaries : int, default 10
        Never-inserted canaries scored per model as the exposure baseline (the dominant cost:
        each scores the whole candidate space).
    relearn_fraction : float, default 0.15
        Share of the subject's records the relearning attacker fine-tunes on.
    relearn_steps, relearn_lr, relearn_batch_size
        The attacker's fine-tuning budget.
    quantize_bits : tuple of int, default (8, 4)
        Fake quantizations of the erased model's merged weights.
    fidelity_texts : int, default 64
        Evaluation prompts for the KL (retained organizations' holdouts, then public text).
    exposure_batch_size : int, default 2048
        Candidates per prefix tree (see :func:`~fedunlearn.evaluate.exposure.candidate_losses`).
    """

    retrain_seeds: int = 3
    baseline_canaries: int = 10
    relearn_fraction: float = 0.15
    relearn_steps: int = 20
    relearn_lr: float = 0.01
    relearn_batch_size: int = 8
    quantize_bits: tuple[int, ...] = (8, 4)
    fidelity_texts: int = 64
    exposure_batch_size: int = 2048

    def __post_init__(self) -> None:
        check_positive_int("retrain_seeds", self.retrain_seeds, hint="use 3 for a spread")
        if isinstance(self.baseline_canaries, bool) or not isinstance(self.baseline_canaries, int) \
                or self.baseline_canaries < 0:
            raise ConfigError(f"baseline_canaries = {self.baseline_canaries!r} is invalid; expected an "
                              "integer >= 0 (e.g. 10)")
        check_fraction("relearn_fraction", self.relearn_fraction, hint="use 0.1 to 0.2")
        check_positive_int("relearn_steps", self.relearn_steps, hint="use e.g. 20")
        check_positive_int("relearn_batch_size", self.relearn_batch_size, hint="use e.g. 8")
        check_positive_int("fidelity_texts", self.fidelity_texts, hint="use e.g. 64")
        check_positive_int("exposure_batch_size", self.exposure_batch_size, hint="use e.g. 512")
