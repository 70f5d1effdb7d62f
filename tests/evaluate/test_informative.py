"""The judge knows when it cannot judge: the rule on constructed numbers, the figures on a real model."""

from __future__ import annotations

import math

import pytest

from fedunlearn.evaluate.exposure import exposure_report
from fedunlearn.evaluate.informative import (
    MIN_PUBLIC_DOCUMENTS,
    ServedFigures,
    chance_p95,
    fit_unigram,
    forgetting_verdict,
    learned_report,
    served_figures,
)
from fedunlearn.evaluate.runmodels import merged_model

from .conftest import MAX_LENGTH


def test_canaries_above_the_never_inserted_p95_are_informative() -> None:
    v = forgetting_verdict("org-x", exposure_before=9.04, never_inserted_p95=4.1, bits_per_byte_before=5.0,
                           bits_per_byte_unigram=4.0)  # the canary criterion wins over bits per byte
    assert v.uninformative is False and v.criterion == "canary-exposure"
    assert "9.0 bits" in v.reason and "p95 4.1 bits" in v.reason
    assert v.to_dict()["exposure_before"] == 9.04 and v.to_dict()["rule"]


@pytest.mark.parametrize("exposure", [1.2, 4.1])  # at the p95 is "not above": uninformative
def test_canaries_at_the_never_inserted_level_are_uninformative(exposure: float) -> None:
    v = forgetting_verdict("org-x", exposure_before=exposure, never_inserted_p95=4.1, bits_per_byte_before=1.0,
                           bits_per_byte_unigram=4.0)
    assert v.uninformative is True and v.criterion == "canary-exposure"
    assert v.reason == (f"forgetting figures for org-x are uninformative: before erasure its canaries' exposure "
                        f"{exposure:.1f} bits was at the never-inserted level (p95 4.1 bits); the model never learned "
                        "what was to be forgotten")


def test_a_few_never_inserted_canaries_never_lower_the_bar_below_chance() -> None:
    """A secret ranked uniformly at random among N: P(exposure >= x) = 2^-x, p95 = log2(N / ceil(N/20))."""
    assert chance_p95(100) == pytest.approx(math.log2(20)) == pytest.approx(chance_p95(10_000))
    assert chance_p95(10) == pytest.approx(math.log2(10))  # the top rank alone already holds 10%
    # the test run of test_suite.py: 3 never-inserted canaries gave p95 1.2; the base model, which never saw
    # the subject's canary, gave it 2.6 bits, and so did the model served before the erasure
    v = forgetting_verdict("org-1", exposure_before=2.56, never_inserted_p95=1.24, bits_per_byte_before=4.4,
                           bits_per_byte_unigram=4.0, candidates=100)
    assert v.uninformative is True and v.chance_p95 == pytest.approx(4.32, abs=0.01)
    assert "p95 4.3 bits, that of a secret ranked by chance; the never-inserted canaries gave 1.2" in v.reason
    high = forgetting_verdict("org-1", exposure_before=4.8, never_inserted_p95=4.9, bits_per_byte_before=None,
                              bits_per_byte_unigram=None, candidates=100)
    assert high.uninformative is True and "(p95 4.9 bits)" in high.reason  # the measured p95 when above chance
    rank5 = forgetting_verdict("org-1", exposure_before=math.log2(100) - math.log2(5), never_inserted_p95=None,
                               bits_per_byte_before=None, bits_per_byte_unigram=None, candidates=100)
    assert rank5.uninformative is True  # the secret 5th of 100 is at the chance p95, not above it
    alone = forgetting_verdict("org-1", exposure_before=6.6, never_inserted_p95=None, bits_per_byte_before=None,
                               bits_per_byte_unigram=None, candidates=100)  # --baseline-canaries 0
    assert alone.uninformative is False and alone.criterion == "canary-exposure"


@pytest.mark.parametrize(("before", "uninformative"), [(2.5, False), (4.0, True), (4.4, True)])
def test_without_canaries_bits_per_byte_against_the_unigram_baseline(before: float, uninformative: bool) -> None:
    for p95 in (None, math.nan):  # no canaries, or no never-inserted baseline scored
        v = forgetting_verdict("org-x", exposure_before=None if p95 is None else 3.0, never_inserted_p95=p95,
                               bits_per_byte_before=before, bits_per_byte_unigram=4.0)
        assert v.uninformative is uninformative and v.criterion == "bits-per-byte"
        assert f"{before:.3f}" in v.reason and "4.000" in v.reason


def test_without_pre_erasure_figures_nobody_can_tell() -> None:
    v = forgetting_verdict("org-x", exposure_before=None, never_inserted_p95=None, bits_per_byte_before=math.nan,
                           bits_per_byte_unigram=4.0)
    assert v.uninformative is None and v.criterion == "unavailable" and "cannot tell" in v.reason


def test_figures_of_a_model_that_memorized_a_canary(memorized) -> None:
    """Real scoring: uniform > unigram; the memorized canary is far above the never-inserted level."""
    consortium, tok = memorized.consortium, memorized.base.tokenizer
    fit = fit_unigram(consortium, tok)
    assert len(consortium.public) < MIN_PUBLIC_DOCUMENTS and fit.source == "training" and fit.documents == 4
    assert fit_unigram(consortium, tok, min_public=10).source == "public"
    base = served_figures(merged_model(memorized.base, (), (), 1.0), consortium, tok, fit.model,
                          max_length=MAX_LENGTH)
    before = served_figures(memorized.model, consortium, tok, fit.model, max_length=MAX_LENGTH, canaries=True,
                            never=consortium.never_inserted)
    bpb = before.bits_per_byte["org-0"]
    assert bpb.texts == 12 and math.isfinite(bpb.model) and bpb.uniform > bpb.unigram > 0
    assert base.exposure == {} and len(before.never_inserted) == 6
    # reusing an exposure report measured elsewhere gives the same figures without scoring it again
    known = exposure_report(memorized.model, tok, consortium.organizations[0].canaries, consortium.never_inserted,
                            consortium.canary_space, max_length=MAX_LENGTH)
    again = served_figures(memorized.model, consortium, tok, fit.model, max_length=MAX_LENGTH, canaries=True,
                           known={"org-0": known})
    assert again.exposure == pytest.approx(before.exposure)
    assert again.never_inserted == pytest.approx(before.never_inserted)
    assert ServedFigures.from_dict(before.to_dict()) == before  # the capture's JSON round trip
    report = learned_report(consortium, "org-0", fit, {"base": base, "before": before}, before_source="model")
    assert report.verdict.uninformative is False and report.verdict.criterion == "canary-exposure"
    assert report.verdict.exposure_before == pytest.approx(known.mean_exposure)
    assert known.mean_exposure > report.verdict.never_inserted_p95 == pytest.approx(known.baseline_p95)
    [row] = report.to_dict()["organizations"]
    assert row["subject"] and set(row["bits_per_byte"]) == {"uniform", "unigram", "base", "before"}
    # 40 epochs on 4 records: worse than unigram on the holdout, yet the canary is memorized; canaries decide
    assert row["bits_per_byte"]["before"] > row["bits_per_byte"]["unigram"] and row["exposure_before"] > 9
    unknown = learned_report(consortium, "org-0", fit, {"base": base}, before_source="captured")
    assert unknown.before == "unavailable" and unknown.verdict.uninformative is None
