"""``fedunlearn evaluate`` and ``fedunlearn report``: audit an erasure; write a self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from fedunlearn.cli._app import app, console, fail
from fedunlearn.errors import FedUnlearnError


@app.command()
def evaluate(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    org: str = typer.Option(..., "--org", help="The erased organization to audit."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the results as JSON to this file "
                                       "(default: RUN/evaluation/<org>.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON document on stdout "
                                 "(the tables and notes go to stderr)."),
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
        from fedunlearn.progress import RichReporter

        result = evaluate_erasure(run, org, options, reporter=RichReporter())  # progress on stderr
        doc = result.to_dict()
        path = out or run / "evaluation" / f"{org}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        certificates = attach_to_certificates(run, result.erasures, summary_for_certificate(result)) \
            if certify else []
    except FedUnlearnError as exc:
        fail(exc)
        return
    if as_json:
        import sys

        sys.stdout.write(json.dumps({**doc, "results_file": str(path), "certificates_reissued": [
            str(cert.path) for cert, reissued in certificates if reissued]}, indent=1, allow_nan=False) + "\n")
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
    if result.learned is not None:
        _print_learned(result.learned)
    console.print(f"results: {path}  ({sum(result.timings.values()):.1f} s)")
    for check in result.certificate_checks:
        flag = "REFUTED" if check.get("consistent") is False else "ok"
        console.print(f"certificate {check['certificate']}: {flag}: {check['message']}")
    for cert, reissued in certificates:
        if reissued:
            console.print(f"certificate re-issued with the evaluation: {cert.path}")
        else:
            console.print(f"certificate {cert.path} already carries these results; not re-issued")


def _print_learned(learned: Any) -> None:
    """A :class:`~fedunlearn.evaluate.informative.LearnedReport`: the table, then the verdict (yellow unless informative)."""
    from rich.markup import escape

    fit = "public documents" if learned.unigram_fit == "public" else "organizations' training records"
    console.print(f"what the models learned: bits per byte on each organization's holdout (unigram fitted on "
                  f"{learned.unigram_documents} {fit}); canary exposure before the erasure", soft_wrap=True)
    for o in learned.organizations:
        cells = "  ".join(f"{n} {v:.3f}" for n, v in {"uniform": o.uniform, "unigram": o.unigram, **o.models}.items())
        exp = "" if o.exposure_before is None else f"  canaries {o.exposure_before:.2f} bits"
        mark = " (erased)" if o.organization == learned.subject else ""
        console.print(f"  {o.organization}{mark}: {cells}{exp}", soft_wrap=True, highlight=False)
    if learned.never_inserted_before:
        never = learned.to_dict()["never_inserted_before"]
        console.print(f"  never-inserted canaries before the erasure: mean {never['mean']:.2f}, p95 {never['p95']:.2f} "
                      f"bits (a secret ranked by chance: p95 {never['chance_p95']:.2f})", soft_wrap=True, highlight=False)
    verdict = learned.verdict
    line = escape(verdict.reason)
    console.print(line if verdict.uninformative is False else f"[yellow]{line}[/yellow]", soft_wrap=True,
                  highlight=False)


@app.command()
def report(
    run: Path = typer.Option(..., "--run", help="Run folder (its RUN/evaluation/*.json are reported)."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default: RUN/report.html)."),
) -> None:
    """Write a self-contained HTML report (ROC curves, exposure, cost, utility, certificates)."""
    from fedunlearn.evaluate.report import write_report
    from fedunlearn.progress import RichReporter

    try:
        path = write_report(run, out or run / "report.html", reporter=RichReporter())
    except FedUnlearnError as exc:
        fail(exc)
        return
    console.print(f"report: {path}")
