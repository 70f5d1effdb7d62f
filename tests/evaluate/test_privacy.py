"""The ε lower bound of an evaluation, and certificates checked against it (real signed certificates)."""

from __future__ import annotations

import numpy as np
import pytest

from fedunlearn.evaluate.privacy import audit_membership, certificate_claim, check_certificates
from fedunlearn.evaluate.scores import SequenceScores
from fedunlearn.evaluate.suite import attach_to_certificates
from tests.certify.conftest import org_key, run_copy, trained_run  # noqa: F401  (fixtures)
from tests.evaluate.test_certify_evaluation import drop_and_certify


def scores(loss: np.ndarray) -> SequenceScores:
    n = loss.size
    return SequenceScores(loss=loss, zlib=loss / 10.0, min_k=-loss, min_k_plus_plus=-loss,
                          num_tokens=np.full(n, 10), k=0.2)


def test_separable_members_give_a_positive_bound_and_chance_gives_zero() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = scores(rng.uniform(0.0, 1.0, 60)), scores(rng.uniform(2.0, 3.0, 60))
    audit = audit_membership(members, nonmembers)
    # 30 counted members and non-members, no error: Clopper-Pearson at 1 - 0.05/8 per rate bounds
    # FPR, FNR <= 1 - (0.05/8)^(1/30) = 0.1555, so ε >= log((1 - 0.1555) / 0.1555) = 1.69
    assert audit.epsilon == pytest.approx(np.log((1 - (1 - (0.05 / 8) ** (1 / 30))) / (1 - (0.05 / 8) ** (1 / 30))),
                                          rel=1e-6)
    assert audit.confidence == 0.95 and audit.bound.false_positives == 0
    same = scores(rng.uniform(0.0, 1.0, 60))
    assert audit_membership(same, scores(rng.uniform(0.0, 1.0, 60))).epsilon < 0.5


def test_claims_of_certificates() -> None:
    assert certificate_claim({"guarantee": {"kind": "exact"}}) == (0.0, 0.0)
    assert certificate_claim({"guarantee": {"kind": "certified", "epsilon": "2.5", "delta": "0.00001"}}) == (2.5, 1e-5)
    assert certificate_claim({"guarantee": {"kind": "empirical"}}) is None


def test_exact_certificate_refuted_by_a_leaking_model_and_reissue_is_idempotent(run_copy, org_key):  # noqa: F811
    erasure, cert = drop_and_certify(run_copy, org_key)
    rng = np.random.default_rng(1)
    leaking = {"after:drop": (scores(rng.uniform(0.0, 1.0, 40)), scores(rng.uniform(2.0, 3.0, 40)))}
    [check] = check_certificates(run_copy, [erasure], leaking)
    assert check["consistent"] is False and "REFUTED" in check["message"]
    assert check["digest"] == cert.digest and check["lower_bound"]["epsilon"] > 1.0
    silent = {"after:drop": (scores(rng.uniform(0.0, 1.0, 40)), scores(rng.uniform(0.0, 1.0, 40)))}
    [check] = check_certificates(run_copy, [erasure], silent)
    assert check["consistent"] is True

    summary = {"after:drop": {"mia_auc": {"loss": 0.5}}}
    [(first, reissued)] = attach_to_certificates(run_copy, [erasure], summary)
    assert reissued and first.body["supersedes"] == cert.digest
    [(again, reissued)] = attach_to_certificates(run_copy, [erasure], summary)
    assert not reissued and again.digest == first.digest  # same results: no new certificate
    [(third, reissued)] = attach_to_certificates(run_copy, [erasure], {"after:drop": {"mia_auc": {"loss": 0.6}}})
    assert reissued and third.body["supersedes"] == first.digest
