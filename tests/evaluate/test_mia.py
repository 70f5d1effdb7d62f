"""ROC AUC, TPR at low FPR and PrivLeak against brute force and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedunlearn.errors import ConfigError, DataError
from fedunlearn.evaluate import mia_results, privleak, roc_auc, roc_curve, score_texts, tpr_at_fpr

scores = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=25)  # small ints: many ties


def brute_force_auc(pos: list[float], neg: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(scores, scores)
def test_auc_equals_pairwise_count_and_trapezoid(pos: list[float], neg: list[float]) -> None:
    auc = roc_auc(pos, neg)
    assert auc == pytest.approx(brute_force_auc(pos, neg))
    roc = roc_curve(pos, neg)
    assert np.trapezoid(roc.tpr, roc.fpr) == pytest.approx(auc)
    assert roc.fpr[0] == roc.tpr[0] == 0.0 and roc.fpr[-1] == roc.tpr[-1] == 1.0
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)


@settings(max_examples=100, deadline=None)
@given(scores, scores)
def test_mirrored_scores_give_one_minus_auc(pos: list[float], neg: list[float]) -> None:
    assert roc_auc([-p for p in pos], [-n for n in neg]) == pytest.approx(1.0 - roc_auc(pos, neg))
    assert roc_auc(neg, pos) == pytest.approx(1.0 - roc_auc(pos, neg))


def test_known_cases() -> None:
    assert roc_auc([3, 4], [1, 2]) == 1.0
    assert roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1, 3], [2, 4]) == 0.25  # only (3 > 2) of four pairs
    assert roc_auc([1.0], [1.0]) == 0.5


def test_tpr_at_one_percent_fpr() -> None:
    neg = np.arange(200, dtype=float)  # scores 0..199; 1% FPR allows the 2 highest non-members
    pos = np.array([300.0, 250.0, 198.5, 197.5, 10.0])
    roc = roc_curve(pos, neg)
    # threshold 197.5 flags non-members 198, 199 (2/200 = 1% FPR) and members 300, 250, 198.5,
    # 197.5; the next lower threshold (197) would flag a third non-member
    assert tpr_at_fpr(roc, 0.01) == pytest.approx(4 / 5)
    # FPR 0 allows no non-member: only members above 199
    assert tpr_at_fpr(roc, 0.001) == pytest.approx(2 / 5)
    with pytest.raises(ConfigError, match="target_fpr"):
        tpr_at_fpr(roc, 1.5)


def test_privleak() -> None:
    assert privleak(0.75, 0.5) == pytest.approx(50.0)
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.25, 0.5) == pytest.approx(-50.0)
    with pytest.raises(ConfigError, match="auc_retrain"):
        privleak(0.5, 0.0)
    with pytest.raises(ConfigError, match="auc_unlearned"):
        privleak(1.5, 0.5)


def test_bad_scores_are_named() -> None:
    with pytest.raises(DataError, match="members is empty"):
        roc_auc([], [1.0])
    with pytest.raises(DataError, match=r"nonmembers\[1\]"):
        roc_auc([1.0], [0.0, float("nan")])


def test_memorized_members_are_separated(memorized) -> None:
    tok = memorized.base.tokenizer
    org = memorized.consortium.organizations[0]
    members = score_texts(memorized.model, tok, org.texts("train"), max_length=48)
    nonmembers = score_texts(memorized.model, tok, org.texts("holdout"), max_length=48)
    results = mia_results(members, nonmembers)
    assert list(results) == ["loss", "min_k", "min_k_plus_plus", "zlib"]
    assert results["loss"].auc > 0.9
    assert results["loss"].num_members == len(org.train)
    base_members = score_texts(memorized.base.model, tok, org.texts("train"), max_length=48)
    base_nonmembers = score_texts(memorized.base.model, tok, org.texts("holdout"), max_length=48)
    base = mia_results(base_members, base_nonmembers, scores=["loss"])
    assert privleak(results["loss"].auc, base["loss"].auc) > 0
