"""The one-run ε lower bound on audit canaries: real scoring on the tiny model, and certificate checks."""

from __future__ import annotations

import types

import numpy as np
import pytest

from fedunlearn.data import generate_consortium
from fedunlearn.errors import ConfigError
from fedunlearn.evaluate.onemodel import AuditContext, evaluate_model
from fedunlearn.evaluate.privacy import audit_one_run, check_certificates
from fedunlearn.evaluate.scores import SequenceScores
from fedunlearn.evaluate.suite import EvaluationOptions
from fedunlearn.evaluate.summary import model_dict
from fedunlearn.models import LoraSpec, wrap_lora
from fedunlearn.training.local import encode_texts, fit_local

from tests.evaluate.conftest import MAX_LENGTH, TARGETS

M = 32  # audit canaries; k = 8 guessed in and 8 out


@pytest.fixture(scope="module")
def audited(tiny_base):
    """A two-organization consortium with 32 audit canaries and the context that audits it."""
    consortium = generate_consortium(
        organizations=["org-0", "org-1"], records_per_org=4, holdout_per_org=8, canaries_per_org=1, canary_repeats=1,
        canary_digits=3, never_inserted=2, public_documents=4, seed=11, audit_canaries_per_org=M,
    )
    opts = EvaluationOptions(baseline_canaries=0, fidelity_texts=4)
    ctx = AuditContext.build(consortium, "org-0", ("org-0",), opts, tokenizer=tiny_base.tokenizer,
                             max_length=MAX_LENGTH)
    return consortium, ctx


def _one_run(ctx, model):
    evaluation, _ = evaluate_model(ctx, "m", "after", model, served=None, full=True, delta=1e-5)
    return evaluation


def test_memorized_included_canaries_give_a_positive_bound_and_an_untrained_model_none(tiny_base, audited) -> None:
    consortium, ctx = audited
    assert len(ctx.audit_canaries) == M and 8 <= sum(a.included for a in ctx.audit_canaries) <= 24
    # the context's members (MIA trials) leave the audit copies out, like canary copies
    assert not any(t.startswith("Audit record") for t in ctx.members)
    spec = LoraSpec(r=16, alpha=32, target_modules=TARGETS)
    untrained = wrap_lora(tiny_base, spec, seed=0)
    untrained.eval()
    fresh = _one_run(ctx, untrained).one_run_audit
    assert fresh is not None and fresh.epsilon == 0.0
    assert fresh.bound.guesses == 16 and fresh.bound.correct < 14

    model = wrap_lora(tiny_base, spec, seed=0)
    train = [r.text for r in consortium.organizations[0].train]  # its records and included audit canaries
    fit_local(model, encode_texts(tiny_base.tokenizer, train, max_length=MAX_LENGTH), epochs=30, batch_size=8,
              lr=1e-2, seed=0)
    model.eval()
    evaluation = _one_run(ctx, model)
    audit = evaluation.one_run_audit
    assert audit.bound.correct == 16  # every guess right
    # 16/16 right refutes ε while P[Binomial(16, e^ε/(1+e^ε)) = 16] <= 0.05 (δ = 1e-5 lowers it a little)
    assert 1.4 < audit.epsilon < np.log(0.05 ** (-1 / 16) / (1 - 0.05 ** (1 / 16))) + 1e-6 + 0.2
    row = model_dict(evaluation)["epsilon_lower_bound_one_run"]
    assert row["method"] == "one-run" and row["canaries"] == M and row["correct"] == 16
    assert row["included"] == sum(a.included for a in ctx.audit_canaries)


def scores(loss: np.ndarray) -> SequenceScores:
    n = loss.size
    return SequenceScores(loss=loss, zlib=loss / 10.0, min_k=-loss, min_k_plus_plus=-loss,
                          num_tokens=np.full(n, 10), k=0.2)


def test_certificate_below_the_one_run_bound_is_refuted(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    included = rng.random(64) < 0.5
    leaky = audit_one_run(included, included.astype(float) + rng.normal(0, 0.05, 64))  # perfect separation
    chance = (scores(rng.uniform(0, 1, 40)), scores(rng.uniform(0, 1, 40)))  # MIA sees nothing
    cert = types.SimpleNamespace(body={"guarantee": {"kind": "certified", "epsilon": 1.0, "delta": 1e-5}},
                                 path=None, digest="d")
    monkeypatch.setattr("fedunlearn.certify.amend.find_certificate", lambda run_dir, served: cert)
    erasure = [{"method": "dp", "served_hash": "h"}]
    [without] = check_certificates(".", erasure, {"after:dp": chance})
    assert without["consistent"] is True and "lower_bound_one_run" not in without
    [row] = check_certificates(".", erasure, {"after:dp": chance}, one_run={"after:dp": leaky})
    assert row["consistent"] is False and "REFUTED" in row["message"] and "32/32 right guesses on 64" in row["message"]
    assert row["lower_bound_one_run"]["delta"] == 1e-5 and row["lower_bound_one_run"]["epsilon"] > 1.0
    cert.body["guarantee"]["epsilon"] = 8.0
    [ok] = check_certificates(".", erasure, {"after:dp": chance}, one_run={"after:dp": leaky})
    assert ok["consistent"] is True


def test_one_run_audit_validates_its_input() -> None:
    with pytest.raises(ConfigError, match="3 audit canaries.*at least 4"):
        audit_one_run([True, False, True], [1.0, 0.0, 1.0])
    with pytest.raises(ConfigError, match="guess_fraction = 0.6"):
        audit_one_run([True, False] * 4, np.arange(8.0), guess_fraction=0.6)
    # coins recomputed at another δ keep the guesses
    a = audit_one_run([True, False] * 8, np.tile([1.0, 0.0], 8))
    assert a.at_delta(1e-3).bound.correct == a.bound.correct and a.at_delta(1e-3).bound.delta == 1e-3
