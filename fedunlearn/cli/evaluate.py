"""``fedunlearn evaluate`` and ``fedunlearn report``: audit an erasure; write a self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from fedunlearn.cli._app import app, console, fail
from fedunlearn.errors import FedUnlearnError


@app.command()
def evaluate(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    org: str = typer.Option(..., "--org", help="The erased organization to audit."),
    out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON to this file "
                                       "(default: RUN/evaluation/<org>.json)."),
    retrain_seeds: int = typer.Option(3, "--retrain-seeds", help="Retrains without the subject (spread)."),
    baseline_canaries: int = typer.Option(10, "--baseline-canaries", help="Never-inserted canaries per model."),
    relearn_steps: int = typer.Option(20, "--relearn-steps", help="Steps of the relearning attack."),
    certify: bool = typer.Option(True, "--certify/--no-certify", help="Re-issue the erasure's certificate with "
                                 "the evaluation summary (when it has one and the summary changed)."),
) -> None:
    """Evaluate the erasure of ORG: MIAs, canary exposure, memorization, utility, fidelity, attacks."""
    from fedunlearn.evaluate.suite import (
        EvaluationOptions,
        attach_to_certificates,
        evaluate_erasure,
        summary_for_certificate,
    )

    try:
        options = EvaluationOptions(retrain_seeds=retrain_seeds, baseline_canaries=baseline_canaries,
                                    relearn_steps=relearn_steps)
        result = evaluate_erasure(run, org, options)
        doc = result.to_dict()
        path = out or run / "evaluation" / f"{org}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        certificates = attach_to_certificates(run, result.erasures, summary_for_certificate(result)) \
            if certify else []
    except FedUnlearnError as exc:
        fail(exc)
        return
    for c in result.captured:
        console.print(f"{c['name']:18s} loss-MIA AUC {c['mia']['loss']['auc']:.3f}  (captured at erasure time)")
    for m in result.models:
        auc = m.mia["loss"].auc
        exp = "-" if m.exposure is None else f"{m.exposure.mean_exposure:.2f}"
        util = "-" if m.utility is None else f"{m.utility.mean_holdout_loss:.3f}"
        kl = "-" if m.kl_to_retrain is None else f"{m.kl_to_retrain:.4f}"
        eps = "" if m.epsilon_audit is None else f"  ε ≥ {m.epsilon_audit.epsilon:.3f}"
        eps += "" if m.one_run_audit is None else f" (one-run ε ≥ {m.one_run_audit.epsilon:.3f})"
        eps += "" if m.canary_org_audit is None else f" (canary orgs ε ≥ {m.canary_org_audit.epsilon:.3f})"
        console.print(f"{m.name:18s} loss-MIA AUC {auc:.3f}  exposure {exp:>6s}  holdout loss {util:>6s}  "
                      f"KL to retrain {kl}{eps}")
    if result.spread is not None:
        console.print(f"retrain spread (KL between seeds): mean {result.spread.mean:.4f}, max {result.spread.max:.4f}")
    console.print(f"results: {path}  ({sum(result.timings.values()):.1f} s)")
    for check in result.certificate_checks:
        flag = "REFUTED" if check.get("consistent") is False else "ok"
        console.print(f"certificate {check['certificate']}: {flag}: {check['message']}")
    for cert, reissued in certificates:
        if reissued:
            console.print(f"certificate re-issued with the evaluation: {cert.path}")
        else:
            console.print(f"certificate {cert.path} already carries these results; not re-issued")


@app.command()
def report(
    run: Path = typer.Option(..., "--run", help="Run folder (its RUN/evaluation/*.json are reported)."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default: RUN/report.html)."),
) -> None:
    """Write a self-contained HTML report (ROC curves, exposure, cost, utility, certificates)."""
    from fedunlearn.evaluate.report import write_report

    try:
        path = write_report(run, out or run / "report.html")
    except FedUnlearnError as exc:
        fail(exc)
        return
    console.print(f"report: {path}")
