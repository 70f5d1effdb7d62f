"""The evaluation suite end to end on a tiny run: models rebuilt, metrics, attacks, JSON, certificate."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from clients.app import make_app
from fedunlearn.config import settings_to_flat
from fedunlearn.errors import ConfigError, RunStateError
from fedunlearn.evaluate.suite import EvaluationOptions, evaluate_erasure
from fedunlearn.unlearning.service import certified_erase
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.unlearning import EraseRequest
from tests.localgrid import LocalGrid

FAST = EvaluationOptions(retrain_seeds=2, baseline_canaries=2, relearn_steps=2, fidelity_texts=8,
                         quantize_bits=(4,))


@pytest.fixture(scope="module")
def erased_run(tiny_model_dir, tmp_path_factory):
    """Three organizations in two shards, trained as a simulation (records saved in RUN/data), then
    org-1 erased with sisa and certified (LocalGrid): its records are no longer in the run folder,
    so the judge regenerates them (checked against the logged fingerprint)."""
    from fedunlearn.config import OrganizationSettings, Settings
    from fedunlearn.federation.simulation import prepare_simulation

    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    settings = Settings(organizations=tuple(OrganizationSettings(name=f"org-{i}") for i in range(3))).replace(
        run={"dir": str(run_dir), "discovery_timeout": 30.0},
        model={"path": str(tiny_model_dir), "device": "cpu"},
        data={"records_per_org": 16, "holdout_per_org": 8, "canaries_per_org": 1, "canary_repeats": 2,
              "never_inserted": 3, "public_documents": 20, "max_length": 40, "canary_digits": 2,
              "audit_canaries_per_org": 16},
        train={"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 2e-2},
        topology={"shards": 2},
    )
    settings = prepare_simulation(settings, run_dir)  # as `fedunlearn simulate` does: RUN/data
    grid = LocalGrid(make_app(), 3, run_config=settings_to_flat(settings))
    train_workflow(grid, settings)
    from fedunlearn.evaluate.before import capture_before

    certified_erase(run_dir, EraseRequest(("org-1",), method="sisa"), grid=grid, before=capture_before)  # as forget
    assert not (run_dir / "data" / "org-1").exists()
    return run_dir


@pytest.fixture(scope="module")
def result(erased_run):
    return evaluate_erasure(erased_run, "org-1", FAST)


def test_every_model_is_evaluated(result):
    names = [m.name for m in result.models]
    # the model served before the sisa erasure depended on org-1 and was purged with its data
    assert names == ["base", "after:sisa", "retrain", "relearn:sisa", "relearn:retrain", "quant4:sisa"]
    assert any("purged" in note and "captured at erasure time" in note for note in result.notes)
    assert result.spread is not None and result.spread.pairwise.shape == (2, 2)
    for m in result.models:
        assert set(m.mia) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
        assert m.exposure is not None and len(m.exposure.inserted) == 1


def test_before_was_captured_at_erasure_and_is_reported(erased_run, result):
    """The pre-erasure model was purged by sisa; the erasure captured its metrics first (no record text kept)."""
    [before] = result.captured
    assert before["name"] == "before" and before["captured_at_erasure"]
    assert set(before["mia"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"} and before["utility"]
    assert before["kl_to_retrain"] is None and "before" in result.privleak
    assert before["exposure"]["baseline"] == [] and len(before["exposure"]["inserted"]) == 1
    stored = next((erased_run / "evaluation" / "before").glob("*.json")).read_text()
    from fedunlearn.evaluate.runmodels import run_consortium
    from fedunlearn.runs import RunFolder

    texts = [r.text for r in run_consortium(RunFolder.open(erased_run)).organization("org-1").train]
    assert not any(t in stored for t in texts)
    doc = result.to_dict()
    assert doc["models"][0]["name"] == "before" and doc["models"][0]["epsilon_lower_bound"]["epsilon"] >= 0


def test_what_the_models_learned_of_every_organization(erased_run, result):
    """Bits per byte on each holdout (uniform > unigram, finite), exposure before from the capture, the verdict."""
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    learned, verdict = doc["learned"], doc["forgetting_verdict"]
    assert learned["unigram_fit"] == "training" and learned["unigram_documents"] == 3 * 16  # 20 public documents
    assert learned["before"] == "captured"  # purged by sisa, measured at erasure time
    assert [o["organization"] for o in learned["organizations"]] == ["org-0", "org-1", "org-2"]
    for o in learned["organizations"]:
        bpb = o["bits_per_byte"]
        assert list(bpb) == ["uniform", "unigram", "base", "before", "after:sisa"] and o["texts"] == 8
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in bpb.values())
        assert bpb["uniform"] > bpb["unigram"]
        assert o["canaries"] == 1 and o["subject"] == (o["organization"] == "org-1")
        # the capture scores no other organization's canary (seconds each, at erasure time)
        assert (o["exposure_before"] is not None) is o["subject"]
    assert learned["never_inserted_before"] is None  # nor never-inserted ones: the threshold is chance's
    [subject] = [o for o in learned["organizations"] if o["subject"]]
    assert verdict["subject"] == "org-1" and verdict["criterion"] == "canary-exposure"
    assert verdict["chance_p95"] == pytest.approx(math.log2(20)) and verdict["never_inserted_p95"] is None
    assert verdict["uninformative"] is (subject["exposure_before"] <= verdict["chance_p95"])
    assert verdict["exposure_before"] == subject["exposure_before"] == result.to_dict()["models"][0]["exposure"]["mean"]
    assert "p95 4.3 bits, that of a secret ranked by chance)" in verdict["reason"] and "rule" in verdict
    # the capture holds the figures, aggregates only: no holdout record either
    stored = next((erased_run / "evaluation" / "before").glob("*.json")).read_text()
    assert '"learned"' in stored
    from fedunlearn.evaluate.runmodels import run_consortium
    from fedunlearn.evaluate.suite import summary_for_certificate
    from fedunlearn.runs import RunFolder

    consortium = run_consortium(RunFolder.open(erased_run))
    assert not any(t in stored for o in consortium.organizations for t in o.texts("holdout"))
    summary = summary_for_certificate(result)
    assert summary["forgetting_uninformative"] is verdict["uninformative"]
    assert summary["forgetting_verdict"] == verdict["reason"] and "after:sisa" in summary  # old keys kept
    assert summary["subject_bits_per_byte"] == subject["bits_per_byte"]


def test_epsilon_lower_bound_in_every_full_evaluation(result):
    for name in ("base", "after:sisa", "retrain"):
        bound = result.model(name).epsilon_audit
        assert bound is not None and bound.epsilon >= 0 and bound.confidence == 0.95
    assert result.model("relearn:sisa").epsilon_audit is None
    for name in ("base", "after:sisa", "retrain"):  # the one-run bound on org-1's 16 audit canaries
        one_run = result.model(name).one_run_audit
        assert one_run is not None and one_run.bound.canaries == 16 and one_run.bound.guesses == 8
        assert one_run.bound.delta == result.model(name).epsilon_audit.bound.delta
    assert result.model("relearn:sisa").one_run_audit is None
    row = result.to_dict()["models"][0]["epsilon_lower_bound_one_run"]  # captured before the erasure too
    assert row["method"] == "one-run" and row["canaries"] == 16
    [check] = result.certificate_checks  # the sisa certificate: exact, so nothing to refute
    assert check["guarantee"] == "exact" and check["model"] == "after:sisa"
    assert result.to_dict()["refuted_certificates"] == []


def test_sisa_equals_retrain_seed0(result):
    """sisa is exact and retrain seed run.seed replays retrain: the two models coincide."""
    after, retrain = result.model("after:sisa"), result.model("retrain")
    assert after.kl_to_retrain == pytest.approx(0.0, abs=1e-6)
    assert result.privleak["after:sisa"]["loss"] == pytest.approx(0.0, abs=1e-9)
    assert after.exposure.mean_exposure == pytest.approx(retrain.exposure.mean_exposure)


def test_full_metrics_on_main_models(result):
    for name in ("base", "after:sisa", "retrain"):
        m = result.model(name)
        assert m.utility is not None and "org-1" not in m.utility.holdout
        assert m.memorization is not None
        assert len(m.exposure.baseline) == (0 if name == "base" else 2)  # the base saw no canary at all
    assert result.model("relearn:sisa").mia["loss"].num_members == result.relearn_split[1]


def test_json_round_trip(result):
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert doc["subject"] == "org-1" and len(doc["models"]) == 7 and doc["notes"]
    assert len(doc["models"][0]["mia"]["loss"]["roc"]["fpr"]) <= 101
    assert doc["erasures"][0]["method"] == "sisa"


def test_retrains_are_cached(erased_run, result):
    from fedunlearn.evaluate.runmodels import start_retrains
    from fedunlearn.runs import RunFolder

    run = RunFolder.open(erased_run)
    seeds = [run.settings.run.seed, run.settings.run.seed + 1]
    assert start_retrains(run, ("org-1",), seeds) is None  # every reference is cached: no second process
    again = evaluate_erasure(erased_run, "org-1", EvaluationOptions(retrain_seeds=2, baseline_canaries=0,
                                                                    relearn_steps=1, quantize_bits=()))
    assert again.model("retrain").mia["loss"].auc == result.model("retrain").mia["loss"].auc
    assert again.model("after:sisa").kl_to_retrain == pytest.approx(0.0, abs=1e-6)


def test_bad_requests_name_the_fix(erased_run, tmp_path):
    with pytest.raises(RunStateError, match="fedunlearn forget"):
        evaluate_erasure(erased_run, "org-0", FAST)
    with pytest.raises(ConfigError, match="baseline_canaries"):
        EvaluationOptions(baseline_canaries=-1)
    with pytest.raises(ConfigError, match="relearn_fraction"):
        EvaluationOptions(relearn_fraction=1.5)


def test_cli_evaluate_then_report(erased_run, tmp_path):
    from typer.testing import CliRunner

    from fedunlearn.cli import app

    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["evaluate", "--run", str(erased_run), "--org", "org-1", "--out", str(out),
                                   "--retrain-seeds", "2", "--baseline-canaries", "1", "--relearn-steps", "1"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    as_json = CliRunner().invoke(app, ["evaluate", "--run", str(erased_run), "--org", "org-1", "--json",
                                       "--out", str(tmp_path / "again.json"), "--retrain-seeds", "2",
                                       "--baseline-canaries", "1", "--relearn-steps", "1", "--no-certify"])
    assert as_json.exit_code == 0, as_json.stderr
    printed = json.loads(as_json.stdout)  # --json: one JSON document on stdout, nothing else
    assert printed["subject"] == "org-1" and printed["results_file"] == str(tmp_path / "again.json")
    assert doc["subject"] == "org-1"
    verdict = doc["forgetting_verdict"]
    assert verdict["reason"] in res.output.replace("\n", "")  # the warning (yellow) or the all-clear line
    assert "what the models learned" in res.output and "org-0: uniform" in res.output
    (erased_run / "evaluation").mkdir(exist_ok=True)
    shutil.copy(out, erased_run / "evaluation" / "org-1.json")
    page = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", "--run", str(erased_run), "--out", str(page)])
    assert res.exit_code == 0, res.output
    assert "report" in res.stderr and "2/2" in res.stderr and "certificates verified" in res.stderr  # progress
    text = page.read_text()
    assert "one-run ε ≥" in text and "of 16)" in text
    assert text.count("<svg") >= 4 and "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "What the model learned" in text and "<table class='learned'>" in text and "org-2</td>" in text
    assert ("class='verdict uninformative'" in text) is verdict["uninformative"]
    from fedunlearn.evaluate.report import render_report

    for flag, box in ((True, "verdict uninformative"), (False, "verdict informative"), (None, "verdict unknown")):
        shown = doc | {"forgetting_verdict": verdict | {"uninformative": flag}}
        (erased_run / "evaluation" / "org-1.json").write_text(json.dumps(shown))
        page_text = render_report(erased_run)
        assert f"class='{box}'" in page_text and ("Warning: " in page_text) is (flag is not False)
    (erased_run / "evaluation" / "org-1.json").write_text(json.dumps(doc))
    res = CliRunner().invoke(app, ["evaluate", "--run", str(erased_run), "--org", "nobody"])
    assert res.exit_code == 2 and "nobody" in res.output
