"""Membership-inference metrics: ROC curve, ROC AUC, TPR at a low FPR, and PrivLeak.

An attack outputs a score per record, higher meaning "more likely a member" (see
:meth:`fedunlearn.evaluate.scores.SequenceScores.membership`). Sweeping a threshold over the
scores gives the ROC curve. Following Carlini et al. (2022), "Membership Inference Attacks From
First Principles", we report the true-positive rate at a low false-positive rate (1%) next to the
AUC: an attack that confidently identifies a few members matters even when its AUC is modest.

For unlearning, MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language
Models") compares the AUC on the forgotten data against that of a model retrained without it:
``PrivLeak = 100 · (AUC_unlearned − AUC_retrain) / AUC_retrain``. Near 0 is good; large positive
values mean under-unlearning (members still stand out), large negative values over-unlearning
(members now stand out as *less* likely, which is itself a membership signal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from fedunlearn.errors import ConfigError
from fedunlearn.evaluate._common import as_scores, check_fraction
from fedunlearn.evaluate.scores import SCORE_NAMES, SequenceScores

__all__ = [
    "MiaResult",
    "RocCurve",
    "mia_results",
    "privleak",
    "roc_auc",
    "roc_curve",
    "tpr_at_fpr",
]


@dataclass(frozen=True)
class RocCurve:
    """ROC curve of a score-threshold attack ("member" when ``score >= threshold``).

    Attributes
    ----------
    fpr, tpr : np.ndarray
        ``[K]`` false- and true-positive rates, non-decreasing, from (0, 0) to (1, 1).
    thresholds : np.ndarray
        ``[K]`` the threshold of each point; ``+inf`` for the first point (nothing flagged).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class MiaResult:
    """One attack's success at telling members from non-members.

    Attributes
    ----------
    score : str
        Which score the attack thresholds (e.g. ``"loss"``).
    auc : float
        ROC AUC in [0, 1]; 0.5 is chance.
    tpr_at_fpr : float
        Largest TPR among ROC points with FPR <= ``target_fpr`` (no interpolation).
    target_fpr : float
    num_members, num_nonmembers : int
    roc : RocCurve
    """

    score: str
    auc: float
    tpr_at_fpr: float
    target_fpr: float
    num_members: int
    num_nonmembers: int
    roc: RocCurve


def roc_curve(members: Sequence[float] | np.ndarray, nonmembers: Sequence[float] | np.ndarray) -> RocCurve:
    """ROC curve of the attack "member if score >= t" over every distinct threshold.

    Parameters
    ----------
    members, nonmembers : array-like of float
        Scores of members and non-members, higher meaning "more likely a member".

    Returns
    -------
    RocCurve
        One point per distinct score plus the origin; tied scores share a point.

    Raises
    ------
    DataError
        If either list is empty or holds a non-finite score.
    """
    pos = as_scores("members", members)
    neg = as_scores("nonmembers", nonmembers)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]  # [K-1] descending
    pos_sorted = np.sort(pos)
    neg_sorted = np.sort(neg)
    # Flagged at threshold t: scores >= t = n - (number < t).
    tp = pos.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
    return RocCurve(
        fpr=np.concatenate([[0.0], fp / neg.size]),
        tpr=np.concatenate([[0.0], tp / pos.size]),
        thresholds=np.concatenate([[np.inf], thresholds]),
    )


def roc_auc(members: Sequence[float] | np.ndarray, nonmembers: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: P(member score > non-member score) + ½ P(tie).

    Computed as the Mann-Whitney U statistic from mid-ranks, O(n log n); equal to the trapezoidal
    area under :func:`roc_curve`.

    Raises
    ------
    DataError
        If either list is empty or holds a non-finite score.
    """
    pos = as_scores("members", members)
    neg = as_scores("nonmembers", nonmembers)
    ranks = rankdata(np.concatenate([pos, neg]))  # mid-ranks for ties
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def tpr_at_fpr(roc: RocCurve, target_fpr: float = 0.01) -> float:
    """Largest true-positive rate of a threshold whose false-positive rate is <= ``target_fpr``.

    With ``n`` non-members an FPR of 1% needs ``n >= 100`` to allow a single false positive;
    below that this is the TPR at FPR = 0 (a strict, conservative reading).

    Raises
    ------
    ConfigError
        If ``target_fpr`` is not in (0, 1).
    """
    target = check_fraction("target_fpr", target_fpr, hint="use e.g. 0.01 for TPR at 1% FPR")
    allowed = roc.fpr <= target + 1e-12
    return float(roc.tpr[allowed].max())


def privleak(auc_unlearned: float, auc_retrain: float) -> float:
    """MUSE's PrivLeak: ``100 · (AUC_unlearned − AUC_retrain) / AUC_retrain`` (Shi et al. 2024).

    Raises
    ------
    ConfigError
        If an AUC is outside [0, 1] or ``auc_retrain`` is 0.
    """
    for name, value in (("auc_unlearned", auc_unlearned), ("auc_retrain", auc_retrain)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} = {value!r} is invalid; expected an AUC in [0, 1] from roc_auc()")
    if auc_retrain == 0.0:
        raise ConfigError(
            "auc_retrain = 0 makes PrivLeak undefined (division by zero); expected the AUC of the "
            "retrained model on the same members and non-members, which is near 0.5"
        )
    return float(100.0 * (auc_unlearned - auc_retrain) / auc_retrain)


def mia_results(
    members: SequenceScores,
    nonmembers: SequenceScores,
    *,
    target_fpr: float = 0.01,
    scores: Sequence[str] = SCORE_NAMES,
) -> Mapping[str, MiaResult]:
    """Run one threshold attack per membership score.

    Parameters
    ----------
    members : SequenceScores
        Scores of the subject's training records under the audited model.
    nonmembers : SequenceScores
        Scores of its holdout records under the same model.
    target_fpr : float, default 0.01
    scores : Sequence[str], default all of :data:`~fedunlearn.evaluate.scores.SCORE_NAMES`

    Returns
    -------
    Mapping[str, MiaResult]
        Keyed by score name, in the order of ``scores``.

    Raises
    ------
    UnknownNameError
        If a score name is unknown.
    """
    results: dict[str, MiaResult] = {}
    for name in scores:
        pos = members.membership(name)
        neg = nonmembers.membership(name)
        roc = roc_curve(pos, neg)
        results[name] = MiaResult(
            score=name,
            auc=roc_auc(pos, neg),
            tpr_at_fpr=tpr_at_fpr(roc, target_fpr),
            target_fpr=float(target_fpr),
            num_members=int(pos.size),
            num_nonmembers=int(neg.size),
            roc=roc,
        )
    return results
