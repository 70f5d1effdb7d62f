"""Canary organizations: keyed coins and directions, the real ClientApp path, and the client-level audit.

The two end-to-end runs (tiny model, in-process Flower grid, 2 real organizations + 32 canaries,
2 rounds, a fixed run secret so they are deterministic) are what proves the audit: without DP the
canaries are found (ε lower bound well above 1), with DP-FedAvg at a certified ε of 0.64 the bound
stays below the accountant's ε — and below what the undefended run shows, so that test can fail.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from clients.app import make_app
from fedunlearn.config import ConfigError, OrganizationSettings, Settings, settings_to_flat
from fedunlearn.evaluate.canary_orgs import CanaryOrgAudit, audit_canary_orgs
from fedunlearn.evaluate.privacy import check_certificates
from fedunlearn.training.canaries import (
    canary_direction,
    canary_fit,
    canary_included,
    canary_plan,
    canary_train_config,
    direction_seed,
)
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from tests.localgrid import LocalGrid

M = 32
KEY = bytes(range(32))
DP_Z = 8.0  # with q = 1 and 2 rounds: ε = 0.644 at δ = 1e-5


def _settings(tiny_model_dir, run_dir: Path, **dp) -> Settings:
    return Settings(organizations=tuple(OrganizationSettings(name=f"org-{i}") for i in range(2))).replace(
        run={"dir": str(run_dir), "discovery_timeout": 30.0},
        model={"path": str(tiny_model_dir), "device": "cpu"},
        data={"records_per_org": 8, "holdout_per_org": 4, "canaries_per_org": 0, "never_inserted": 0,
              "public_documents": 4, "max_length": 32},
        train={"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 2e-2},
        dp={"audit_canary_orgs": M, "client_clip": 0.1, **dp})


def _train(settings: Settings) -> tuple[Path, LocalGrid]:
    """Train through the real ClientApp on an in-process grid, with the run secret fixed to KEY."""
    run_dir = Path(settings.run.dir)
    RunFolder.create_or_resume(run_dir, settings, Path(settings.model.path))
    (run_dir / "secrets").mkdir(mode=0o700)
    fd = os.open(run_dir / "secrets" / "dp-sampling.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, KEY)
    os.close(fd)
    grid = LocalGrid(make_app(), len(settings.organizations) + M, run_config=settings_to_flat(settings))
    train_workflow(grid, settings)
    return run_dir, grid


def _audit(run_dir: Path, delta: float = 1e-5) -> CanaryOrgAudit:
    run = RunFolder.open(run_dir)
    with Ledger.open(run_dir) as ledger:
        audit = audit_canary_orgs(run, ledger, ledger.served()["served_hash"], delta=delta)
    assert audit is not None
    return audit


@pytest.fixture(scope="module")
def plain_run(tiny_model_dir, tmp_path_factory):
    return _train(_settings(tiny_model_dir, tmp_path_factory.mktemp("canary-plain") / "run"))


@pytest.fixture(scope="module")
def dp_run(tiny_model_dir, tmp_path_factory):
    return _train(_settings(tiny_model_dir, tmp_path_factory.mktemp("canary-dp") / "run", client_level=True,
                            client_noise_multiplier=DP_Z))


# -- keyed coins and directions ------------------------------------------------------------------
@hsettings(max_examples=25, deadline=None)
@given(key=st.binary(min_size=16, max_size=40), j=st.integers(0, 10_000))
def test_coin_and_direction_are_functions_of_key_and_name(key, j):
    name = f"canary-org-{j}"
    assert canary_included(key, name) == canary_included(bytes(key), name)
    assert direction_seed(key, name) == direction_seed(bytes(key), name)
    like = {"b": torch.zeros(3, 5), "a": torch.zeros(7)}
    u = canary_direction(direction_seed(key, name), like)
    assert u.keys() == like.keys() and all(u[k].shape == like[k].shape for k in like)
    assert math.isclose(math.sqrt(sum(float((v * v).sum()) for v in u.values())), 1.0, rel_tol=1e-5)
    v = canary_direction(direction_seed(key, name), like)
    assert all(torch.equal(u[k], v[k]) for k in like)  # the auditor recomputes exactly what the node added
    other = direction_seed(key + b"x", name)
    assert other != direction_seed(key, name)


def test_coins_are_fair_and_independent_of_each_other():
    """Over 4000 canaries the coins are ~Bernoulli(1/2), uncorrelated between neighbours and between keys."""
    names = [f"canary-org-{j}" for j in range(4000)]
    a = np.array([canary_included(KEY, n) for n in names], dtype=float)
    b = np.array([canary_included(KEY[::-1], n) for n in names], dtype=float)
    assert abs(a.mean() - 0.5) < 0.03 and abs(b.mean() - 0.5) < 0.03  # 4 standard deviations
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.07 and abs(np.corrcoef(a, b)[0, 1]) < 0.07


def test_canary_fit_adds_norm_times_direction():
    state = {"x": torch.randn(4, 6), "y": torch.randn(9)}
    settings = Settings().replace(dp={"audit_canary_orgs": 4, "audit_canary_norm": 0.25})
    cfg = canary_train_config(KEY, "canary-org-2", settings)
    new, fit = canary_fit(state, cfg, examples=12)
    u = canary_direction(direction_seed(KEY, "canary-org-2"), state)
    assert fit.num_examples == 12 and fit.steps == 0
    for k in state:
        torch.testing.assert_close(new[k] - state[k], 0.25 * u[k])
    assert canary_train_config(KEY, "canary-org-2", Settings())["canary-norm"] == Settings().dp.client_clip
    with pytest.raises(Exception, match="lack"):
        canary_fit(state, {}, examples=1)


def test_canary_names_are_reserved_and_never_erasure_subjects(plain_run):
    with pytest.raises(ConfigError, match="reserved"):
        Settings(organizations=(OrganizationSettings(name="org-0"), OrganizationSettings(name="canary-org-1")))
    from fedunlearn.unlearning import EraseRequest, check_request

    run_dir, _ = plain_run
    member = canary_plan(RunFolder.open(run_dir).settings, KEY).members[0]
    with Ledger.open(run_dir) as ledger, pytest.raises(ConfigError, match="canary organization"):
        check_request(EraseRequest((member,), method="sisa"), ledger)


def test_canary_nodes_come_after_the_organizations():
    """Simulated nodes: partition ids past the organizations are the canaries (one node each, included or not)."""
    from fedunlearn.training.canaries import canary_data
    from fedunlearn.training.client import organization_data, organization_name

    s = Settings().replace(dp={"audit_canary_orgs": 3})
    assert [organization_name(s, {"partition-id": i}) for i in (3, 4, 6)] == ["org-3", "canary-org-0", "canary-org-2"]
    assert organization_name(s, {"org": "canary-org-1"}) == "canary-org-1"
    with pytest.raises(ConfigError, match="num-supernodes = 7"):
        organization_name(s, {"partition-id": 7})
    with pytest.raises(ConfigError, match="not in the run's organizations"):
        organization_name(Settings(), {"org": "canary-org-1"})  # no canaries in this run
    assert organization_data(s, "canary-org-1") == canary_data("canary-org-1")


# -- membership through the real ClientApp ---------------------------------------------------------
def test_only_included_canaries_take_part_and_no_canary_is_evaluated(plain_run):
    run_dir, grid = plain_run
    plan = canary_plan(RunFolder.open(run_dir).settings, KEY)
    assert 4 < len(plan.members) < M - 4
    with Ledger.open(run_dir) as ledger:
        registered = {o.name for o in ledger.organizations()}
        assert registered == {"org-0", "org-1", *plan.members}
        for ckpt in ledger.chain(0)[1:]:
            contributors = {c.org for c in ledger.contributions(ckpt.id)}
            assert contributors == {"org-0", "org-1", *plan.members}  # every included canary, every round
    trained = {m.content["config"]["org"] for m in grid.sent if m.metadata.message_type == "train"}
    assert trained == {"org-0", "org-1", *plan.members}
    canary_nodes = set(list(grid.contexts)[2:])  # partition ids 2.. are the canaries
    evaluated = {m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "evaluate"}
    assert evaluated and not evaluated & canary_nodes
    from fedunlearn.certify import RunAudit

    with RunAudit.open(run_dir) as log:  # excluded canaries are not even enrolled in the audit log
        enrolled = {e["org"] for _, e in log.events("enrolment")}
        assert {log.subject(n) for n in plan.names if not plan.included[n]}.isdisjoint(enrolled)
        assert {log.subject(n) for n in plan.members} <= enrolled


# -- the audit -------------------------------------------------------------------------------------
def test_without_dp_the_canaries_are_found(plain_run):
    audit = _audit(plain_run[0])
    b = audit.audit.bound
    assert b.correct == b.guesses == 16 and audit.epsilon > 1.5  # 16/16 right: the largest bound 32 canaries give
    assert audit.accounted_epsilon is None and audit.consistent is None  # no DP claimed, nothing refuted
    d = audit.to_dict()
    assert d["method"] == "one-run-canary-orgs" and len(d["scores"]) == M


def test_with_dp_fedavg_the_bound_stays_below_the_certified_epsilon(dp_run, plain_run):
    audit = _audit(dp_run[0])
    assert audit.history == ((DP_Z, 1.0, 1), (DP_Z, 1.0, 1))  # eligible in both rounds, from the audit log
    assert audit.accounted_epsilon == pytest.approx(0.644, abs=0.01)
    assert audit.epsilon <= audit.accounted_epsilon and audit.consistent is True
    # the same canaries without the noise would refute that ε: the DP test can fail
    assert _audit(plain_run[0]).epsilon > audit.accounted_epsilon
    refuting = CanaryOrgAudit(audit=_audit(plain_run[0]).audit, names=audit.names, norm=audit.norm,
                              history=audit.history, accounted_epsilon=audit.accounted_epsilon)
    assert refuting.consistent is False and refuting.at_delta(1e-3).accounted_epsilon < audit.accounted_epsilon


def test_certified_certificate_is_checked_against_the_canaries(dp_run, plain_run, tmp_path):
    """A certified (DP-FedAvg) certificate: consistent with the DP run's canaries, refuted by undefended ones."""
    from typer.testing import CliRunner

    from fedunlearn.audit import generate_signing_key, save_public_key
    from fedunlearn.certify import RunAudit, authorize_request, certify_erasure, sign_request
    from fedunlearn.cli import app

    run_dir = dp_run[0]
    key = generate_signing_key("org-1.example/erasure")
    pub = save_public_key(key, tmp_path / "org-1.pub")
    result = CliRunner().invoke(app, ["keys", "enrol", "--run", str(run_dir), "--org", "org-1", "--public-key", str(pub)])
    assert result.exit_code == 0, result.output
    run = RunFolder.open(run_dir)
    with RunAudit.open(run_dir) as log, Ledger.open(run_dir) as ledger:
        auth = authorize_request(log, sign_request(key, run=log.origin, subjects=["org-1"]))
        served = ledger.served()["served_hash"]
        erasure = {"method": "retrain", "guarantee": "certified", "served_hash": served, "previous_served_hash": served,
                   "heads": {}, "cost": {"client_steps": 0}, "full_retrain_cost": {"client_steps": 8}}
        certify_erasure(run, auth, erasure, ledger=ledger, audit=log)
    from fedunlearn.evaluate.scores import score_texts
    from fedunlearn.evaluate.runmodels import load_base, merged_model, run_consortium

    base = load_base(run)
    org = run_consortium(run).organization("org-1")
    scores = {"after:retrain": tuple(score_texts(merged_model(base, (), (), 1.0), base.tokenizer, org.texts(s),
                                                 max_length=32) for s in ("train", "holdout"))}
    assert _audit(run_dir, delta=0.0).accounted_epsilon == math.inf  # Gaussian noise: no finite ε at δ = 0
    good = _audit(run_dir)
    [row] = check_certificates(run_dir, [erasure], scores, canary_orgs={"after:retrain": good})
    assert row["consistent"] is True and "canary organizations" in row["message"]
    assert row["lower_bound_canary_orgs"]["epsilon_accounted"] > row["lower_bound_canary_orgs"]["epsilon"]
    bad = CanaryOrgAudit(audit=_audit(plain_run[0]).audit, names=good.names, norm=good.norm, history=good.history)
    [row] = check_certificates(run_dir, [erasure], scores, canary_orgs={"after:retrain": bad})
    assert row["consistent"] is False and "REFUTED" in row["message"]
    from fedunlearn.certify import verify_run

    report = verify_run(run_dir)  # canaries are enrolled, logged and accounted like any organization;
    # the one disagreement is the certificate this test fabricated: a "retrain" that erased nothing
    assert report.problems == ["ledger: organization 'org-1' is 'active' but the log records its erasure"], report.problems


def test_erasing_a_real_organization_keeps_the_canaries(plain_run, tmp_path):
    """sisa of org-1 replays both rounds with the canaries (same updates), and the reference retrain adds them too."""
    import shutil

    from fedunlearn.evaluate.runmodels import retrain_reference, run_consortium
    from fedunlearn.unlearning.service import erase
    from fedunlearn.unlearning import EraseRequest

    src, _ = plain_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    settings = RunFolder.open(run_dir).settings.replace(run={"dir": str(run_dir)})
    grid = LocalGrid(make_app(), 2 + M, run_config=settings_to_flat(settings))
    erase(run_dir, EraseRequest(("org-1",), method="sisa"), grid=grid)
    plan = canary_plan(settings, KEY)
    run = RunFolder.open(run_dir)
    with Ledger.open(run_dir) as ledger:
        assert {o.name for o in ledger.organizations() if o.status == "active"} == {"org-0", *plan.members}
        for ckpt in ledger.chain(0)[1:]:
            assert {c.org for c in ledger.contributions(ckpt.id)} == {"org-0", *plan.members}
        after = audit_canary_orgs(run, ledger, ledger.served()["served_hash"], delta=1e-5)
        ref = retrain_reference(run, ledger, run_consortium(run), ["org-1"], run.settings.run.seed)
        head = ledger.get_state(ledger.head(0).hash)
    assert after is not None and after.audit.bound.correct == 16  # still found after the erasure
    for k, v in ref.states[0].items():  # the reference retrain equals sisa's: same seeds, same canary updates
        torch.testing.assert_close(v, head[k], rtol=1e-4, atol=1e-5)
    # `fedunlearn evaluate`: the canary audit in its output, the JSON, the certificate summary and the report
    import json

    from typer.testing import CliRunner

    from fedunlearn.cli import app
    from fedunlearn.evaluate.report import render_report
    from fedunlearn.evaluate.summary import model_summary

    out = CliRunner().invoke(app, ["evaluate", "--run", str(run_dir), "--org", "org-1", "--retrain-seeds", "1",
                                   "--baseline-canaries", "0", "--relearn-steps", "1"])
    assert out.exit_code == 0, out.output
    assert f"canary orgs ε ≥ {after.epsilon:.3f}" in out.output
    doc = json.loads((run_dir / "evaluation" / "org-1.json").read_text(encoding="utf-8"))
    [after_doc] = [m for m in doc["models"] if m["name"] == "after:sisa"]
    assert after_doc["epsilon_lower_bound_canary_orgs"]["correct"] == 16
    assert not any("epsilon_lower_bound_canary_orgs" in m for m in doc["models"] if m["name"] != "after:sisa")
    assert set(after_doc["utility"]["holdout"]) == {"org-0"}  # canaries are no retained organization
    assert model_summary(after_doc)["epsilon_lower_bound_canary_orgs"] == pytest.approx(after.epsilon)
    page = render_report(run_dir)
    assert "canary organizations" in page and "16/16 of 32" in page


@pytest.mark.parametrize("method", ["influence", "subtract"])
def test_approximate_erasure_runs_with_canaries_and_keeps_them(plain_run, tmp_path, method):
    """influence leaves canaries out of its gradient queries (no data); subtract's calibration sends them their direction."""
    import shutil

    from fedunlearn.unlearning.service import erase
    from fedunlearn.unlearning import EraseRequest

    src, _ = plain_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    settings = RunFolder.open(run_dir).settings.replace(run={"dir": str(run_dir)})
    grid = LocalGrid(make_app(), 2 + M, run_config=settings_to_flat(settings))
    result = erase(run_dir, EraseRequest(("org-1",), method=method), grid=grid)
    members = set(canary_plan(settings, KEY).members)
    assert set(result.organizations) & members == (members if method == "subtract" else set())
    with Ledger.open(run_dir) as ledger:
        after = audit_canary_orgs(RunFolder.open(run_dir), ledger, ledger.served()["served_hash"], delta=1e-5)
    assert after is not None
    if method == "influence":  # a Newton step on the factors keeps the canaries' factor-space directions
        assert after.audit.bound.correct >= 14
    # subtract re-factorizes ΔW by SVD: the new factors are a rotation of the old, so the factor-space
    # cosine sees nothing (a valid, uninformative bound); the audit is meant for sisa/retrain/influence


def test_training_stops_when_only_canaries_could_train(plain_run, tmp_path):
    """Canaries never refuse a round (they train nothing), so they must not keep a run going alone."""
    import json
    import shutil

    from fedunlearn.federation.coordinator import Coordinator
    from fedunlearn.ledger.store import BUDGET_STOP_PREFIX

    run_dir = tmp_path / "run"
    shutil.copytree(plain_run[0], run_dir)
    with Ledger.open(run_dir) as ledger:
        coord = Coordinator(None, RunFolder.open(run_dir), ledger)  # type: ignore[arg-type]
        assert coord._anyone_can_train(3)
        for org in ("org-0", "org-1"):
            ledger.set_meta(BUDGET_STOP_PREFIX + org, json.dumps({"from_round": 3}))
        assert not coord._anyone_can_train(3) and coord._anyone_can_train(2)
