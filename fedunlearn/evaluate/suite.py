"""The evaluation of one organization's erasure in a run: every metric on every model that matters.

Models: the base, the served model before the erasure, after each erasure of the subject applied
in the run (``RUN_DIR/erasures.jsonl``), retrains without the subject (``retrain_seeds`` seeds, see
:mod:`~fedunlearn.evaluate.runmodels`) and attacked variants of the erased and retrained models
(relearning, 8/4-bit quantization; :mod:`~fedunlearn.evaluate.attacks`).

Metrics per model: MIAs of the subject's training records (canary copies ``<id>#k`` left out)
against its holdout, canary exposure (inserted vs ``baseline_canaries`` never-inserted ones),
memorization of the subject's records, utility on retained organizations and public text, and
next-token KL to the first retrain (fidelity, with the retrains' mutual spread as noise level).

Per organization of the run, what the base and the served models before and after learned of it
(bits per byte on its holdout against uniform and unigram baselines, canary exposure before the
erasure) and whether the subject's forgetting figures can mean anything at all
(:mod:`~fedunlearn.evaluate.informative`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedunlearn.errors import RunStateError
from fedunlearn.evaluate.attacks import fake_quantize, relearn, relearn_split
from fedunlearn.evaluate.fidelity import mean_next_token_kl, retrain_spread
from fedunlearn.evaluate.mia import privleak
from fedunlearn.evaluate.options import EvaluationOptions
from fedunlearn.evaluate.runmodels import (
    finish_retrains,
    load_base,
    merged_model,
    run_consortium,
    served_history,
    start_retrains,
)
from fedunlearn.evaluate.before import load_captured, load_captured_learned
from fedunlearn.evaluate.informative import ServedFigures, fit_unigram, learned_report, served_figures
from fedunlearn.evaluate.onemodel import AuditContext, evaluate_model
from fedunlearn.evaluate.privacy import check_certificates
from fedunlearn.evaluate.scores import SequenceScores
from fedunlearn.evaluate.summary import ModelEvaluation, SuiteResult, learned_summary, model_summary
from fedunlearn.ledger import Ledger
from fedunlearn.progress import LogReporter, Reporter
from fedunlearn.runs import RunFolder
from fedunlearn.training.client import lora_spec

__all__ = [
    "EvaluationOptions",
    "applied_erasures",
    "attach_to_certificates",
    "evaluate_erasure",
    "summary_for_certificate",
]


def applied_erasures(run: RunFolder, org: str) -> list[dict[str, Any]]:
    """The erasures of ``org`` recorded in ``RUN_DIR/erasures.jsonl``, oldest first."""
    path = run.path / "erasures.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if org in row.get("subjects", ()):
                    rows.append(row)
    return rows


def evaluate_erasure(run_dir: str | Path, org: str, options: EvaluationOptions | None = None,
                     reporter: Reporter | None = None) -> SuiteResult:
    """Evaluate the erasure of ``org`` from the run in ``run_dir``.

    The retrain references are trained in a second process (when the machine has 2 cores or more and
    they are not cached) while this one evaluates the base, the erased models and their attacks;
    KL to the retrain is filled in once the references exist. Results do not depend on this
    (the same code and seeds, one CPU thread each).

    Raises
    ------
    RunStateError
        If the run holds no applied erasure of ``org``, or a served model it names is missing.
    UnknownNameError
        If ``org`` is not an organization of the run.
    """
    opts = options or EvaluationOptions()
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    run = RunFolder.open(Path(run_dir))
    with Ledger.open(run.path) as ledger:
        ledger.organization(org)  # UnknownNameError listing the valid names
        erasures = applied_erasures(run, org)
        if not erasures:
            raise RunStateError(
                f"run {str(run.path)!r} records no applied erasure of {org!r} in erasures.jsonl; erase it "
                f"first: `fedunlearn forget --run {run.path} --org {org}`"
            )
        history = served_history(ledger)
    subjects = tuple(erasures[0]["subjects"])
    seeds = [run.settings.run.seed + k for k in range(opts.retrain_seeds)]
    say = (reporter or LogReporter()).message  # a line per step: the whole evaluation takes tens of seconds
    say(f"evaluating the erasure of {org}: {len(seeds)} retrain reference(s) without it start in the background")
    worker = start_retrains(run, subjects, seeds)
    consortium = run_consortium(run)
    base = load_base(run)
    timings["load"] = time.perf_counter() - clock
    scaling = lora_spec(run.settings).scaling
    tok, max_len = base.tokenizer, run.settings.data.max_length

    def build(state: Any) -> Any:
        return merged_model(base, state.states, state.weights, scaling)

    before_hash = previous = erasures[0].get("previous_served_hash")
    notes: list[str] = []
    if before_hash not in history:
        # an exact erasure purges every aggregate that depends on the subject (store privacy)
        notes.append("the model served before the erasure depended on the erased organization and was purged "
                     "with its data; it cannot be rebuilt, so 'before' is not evaluated")
        before_hash = None
    for h in [e["served_hash"] for e in erasures]:
        if h not in history:
            notes.append(f"served model {str(h)[:16]}… (an earlier erasure's result) was purged by a later "
                         "erasure; not evaluated")
    erasures = [e for e in erasures if e["served_hash"] in history]
    if not erasures:
        raise RunStateError("no model served after an erasure of this organization can be rebuilt from the "
                            "ledger; evaluate an intact run folder")
    ctx = AuditContext.build(consortium, org, subjects, opts, tokenizer=tok, max_length=max_len)
    split = relearn_split(ctx.members, opts.relearn_fraction, seed=run.settings.run.seed)
    delta = float(run.settings.dp.delta)
    scores: dict[str, tuple[SequenceScores, SequenceScores]] = {}
    done: dict[str, ModelEvaluation] = {}
    full_models: dict[str, Any] = {}

    def evaluate(name: str, kind: str, model: Any, *, served: str | None, full: bool,
                 audit: tuple[str, ...] | None = None, reference: Any = None, baseline: bool = True) -> None:
        say(f"  {name}: membership inference, canary exposure, memorization, utility"
            + (", fidelity" if full else ""))
        evaluation, raw = evaluate_model(ctx, name, kind, model, served=served, full=full, audit=audit,
                                         reference=reference, delta=delta, baseline=baseline)
        scores[name], done[name] = raw, evaluation
        if full:
            full_models[name] = model

    clock = time.perf_counter()
    fit = fit_unigram(consortium, tok)
    learned: dict[str, ServedFigures] = {}
    learned_seconds = 0.0

    def learn(name: str, model: Any, **kwargs: Any) -> None:
        nonlocal learned_seconds
        start = time.perf_counter()
        learned[name] = served_figures(model, consortium, tok, fit.model, max_length=max_len,
                                       batch_size=opts.exposure_batch_size, **kwargs)
        learned_seconds += time.perf_counter() - start

    # the base never saw any canary: its inserted canaries are a baseline already
    base_model = merged_model(base, (), (), scaling)
    evaluate("base", "base", base_model, served=None, full=True, baseline=False)
    learn("base", base_model)
    captured: list[dict[str, Any]] = []
    before_source = "unavailable"
    if before_hash is not None:
        before_model = build(history[before_hash])
        evaluate("before", "before", before_model, served=before_hash, full=True)
        exposure = done["before"].exposure
        learn("before", before_model, canaries=True, never=ctx.never,
              known={org: exposure} if exposure is not None else None)
        before_source = "model"
    elif previous:
        figures = load_captured_learned(run.path, str(previous))
        if figures is not None:
            learned["before"], before_source = figures, "captured"
        found = load_captured(run.path, str(previous), org)
        if found is not None:
            captured.append(dict(found))
            notes[0] = ("the model served before the erasure was purged with the erased organization's data; its "
                        "metrics were captured at erasure time, before the purge (no KL to retrain: no reference "
                        "existed then)")
    erased_models = []
    for e in erasures:
        m = build(history[e["served_hash"]])
        erased_models.append((e["method"], m))
        evaluate(f"after:{e['method']}", "after", m, served=e["served_hash"], full=True)
        learn(f"after:{e['method']}", m)
    timings["models"] = time.perf_counter() - clock - learned_seconds
    timings["learned"] = learned_seconds
    clock = time.perf_counter()
    spec = lora_spec(run.settings)

    def attack(name: str, m: Any) -> None:
        say(f"  {name}: relearning attack ({opts.relearn_steps} steps on {len(split.attack)} of the subject's records)")
        hit = relearn(m, base, split.attack, steps=opts.relearn_steps, lr=opts.relearn_lr,
                      batch_size=opts.relearn_batch_size, spec=spec, max_length=max_len, seed=run.settings.run.seed)
        evaluate(name, "relearn", hit, served=None, full=False, audit=split.audit)

    for n, m in erased_models:
        attack(f"relearn:{n}", m)
    timings["relearn"] = time.perf_counter() - clock
    clock = time.perf_counter()
    for bits in opts.quantize_bits:
        for n, m in erased_models:
            evaluate(f"quant{bits}:{n}", "quantized", fake_quantize(m, bits), served=None, full=False)
    timings["quantize"] = time.perf_counter() - clock
    clock = time.perf_counter()
    say("  waiting for the retrain references")
    retrains = finish_retrains(worker, run, subjects, seeds, consortium, base)
    timings["retrain_references_wait"] = time.perf_counter() - clock
    clock = time.perf_counter()
    reference = build(retrains[0])
    evaluate("retrain", "retrain", reference, served=None, full=True, reference=reference)
    for name, m in full_models.items():
        if done[name].kl_to_retrain is None:
            kl = mean_next_token_kl(reference, m, tok, list(ctx.prompts), max_length=max_len).mean
            done[name] = dataclasses.replace(done[name], kl_to_retrain=kl)
    spread = retrain_spread([reference] + [build(r) for r in retrains[1:]], tok, list(ctx.prompts),
                            max_length=max_len) if len(retrains) > 1 else None
    attack("relearn:retrain", reference)
    timings["retrain_models"] = time.perf_counter() - clock
    order = ["base", "before"] + [f"after:{n}" for n, _ in erased_models] + ["retrain"] + \
        [f"relearn:{n}" for n, _ in erased_models] + ["relearn:retrain"] + \
        [f"quant{b}:{n}" for b in opts.quantize_bits for n, _ in erased_models]
    models = [done[name] for name in order if name in done]
    retrain_auc = {k: v.auc for k, v in done["retrain"].mia.items()}
    leaks = {m.name: {k: privleak(v.auc, retrain_auc[k]) for k, v in m.mia.items()}
             for m in models if m.kind in ("before", "after", "base", "retrain", "quantized")}
    for c in captured:
        leaks[c["name"]] = {k: privleak(v["auc"], retrain_auc[k]) for k, v in c["mia"].items() if k in retrain_auc}
    erasure_rows = tuple({k: e.get(k) for k in ("method", "guarantee", "served_hash", "previous_served_hash",
                                                "cost", "full_retrain_cost")} for e in erasures)
    models = _with_canary_orgs(run, models, delta)
    one_run = {m.name: m.one_run_audit for m in models if m.one_run_audit is not None}
    canaries = {m.name: m.canary_org_audit for m in models if m.canary_org_audit is not None}
    checks = check_certificates(run.path, erasures, scores, one_run=one_run, canary_orgs=canaries)
    return SuiteResult(run=str(run.path), subject=org, subjects=subjects, erasures=erasure_rows,
                       models=tuple(models), spread=spread, privleak=leaks, relearn_split=(len(split.attack),
                       len(split.audit)), options=opts, timings=timings, notes=tuple(notes),
                       certificate_checks=tuple(checks), captured=tuple(captured),
                       learned=learned_report(consortium, org, fit, learned, before_source=before_source))


def _with_canary_orgs(run: RunFolder, models: list[ModelEvaluation], delta: float) -> list[ModelEvaluation]:
    """Each served model (before / after an erasure) with its canary-organization audit, when the run has them."""
    if run.settings.dp.audit_canary_orgs < 4:
        return models
    from fedunlearn.evaluate.canary_orgs import audit_canary_orgs

    with Ledger.open(run.path) as ledger:
        return [dataclasses.replace(m, canary_org_audit=audit_canary_orgs(run, ledger, m.served_hash, delta=delta))
                if m.served_hash and m.kind in ("before", "after") else m for m in models]


def summary_for_certificate(result: SuiteResult) -> Mapping[str, Any]:
    """The compact summary of ``result`` written into the erasure's certificate."""
    models = [(c["name"], c) for c in result.captured] + [(m.name, m) for m in result.models]
    return {name: model_summary(m) for name, m in models} | learned_summary(result.learned) | {
        "retrain_spread_kl": None if result.spread is None else result.spread.mean,
        "privleak": result.privleak,
        "certificate_checks": [{k: c.get(k) for k in ("guarantee", "epsilon_certified", "consistent")}
                               | {"epsilon_lower_bound": (c.get("lower_bound") or {}).get("epsilon")}
                               | ({"epsilon_lower_bound_one_run": c["lower_bound_one_run"]["epsilon"]}
                                  if c.get("lower_bound_one_run") else {})
                               | ({"epsilon_lower_bound_canary_orgs": c["lower_bound_canary_orgs"]["epsilon"],
                                   "canary_orgs_epsilon_accounted": c["lower_bound_canary_orgs"]["epsilon_accounted"]}
                                  if c.get("lower_bound_canary_orgs") else {})
                               for c in result.certificate_checks],
    }


def attach_to_certificates(run_dir: str | Path, erasures: Sequence[Mapping[str, Any]],
                           summary: Mapping[str, Any]) -> list[tuple[Any, bool]]:
    """Give each erasure's certificate the evaluation ``summary``, re-issuing it only when that changes it.

    A certificate that already carries exactly this summary (an earlier ``evaluate`` with the same
    results) is kept: repeated evaluations do not pile up superseding certificates.

    Returns
    -------
    list of (Certificate, bool)
        The current certificate of each certified erasure and whether it was re-issued now.
    """
    from fedunlearn.certify.amend import find_certificate, reissue_with_evaluation
    from fedunlearn.certify.certificate import _jsonable

    wanted = _jsonable(dict(summary))
    out: list[tuple[Any, bool]] = []
    for erasure in erasures:
        cert = find_certificate(run_dir, str(erasure["served_hash"]))
        if cert is None:
            continue
        if cert.body.get("evaluation") == wanted:
            out.append((cert, False))
        else:
            out.append((reissue_with_evaluation(run_dir, cert, summary), True))
    return out
