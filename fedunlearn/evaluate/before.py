"""Capture the metrics of the model served before an erasure, before the erasure purges it.

An exact erasure purges every aggregate whose lineage holds the subject (store privacy): the model
served before it cannot be rebuilt afterwards, so ``fedunlearn evaluate`` could not compare
"before" with "after". The erasure service runs :func:`capture_before` first (a hook its caller
passes), while that model is intact; it evaluates it like the other fully evaluated models of the suite (MIAs, exposure of the
subject's canaries, memorization, utility and the ε lower bound; no never-inserted baseline
canaries, to keep the erasure short, and no KL to retrain, since no retrain exists yet), adds what
it had learned of every organization (bits per byte on each holdout, and the subjects' canary
exposure from above; other organizations' canaries are not scored, to keep the erasure short: see
:mod:`~fedunlearn.evaluate.informative`, without them nobody could tell afterwards whether the
forgetting figures mean anything) and writes the result to
``RUN_DIR/evaluation/before/<served hash>.json``. Callers that pass no hook capture nothing
(``fedunlearn forget --no-capture-before``, the Python API's default).

What is stored is aggregate metrics only: AUCs, thinned ROC curves, exposures and ranks of canary
ids, losses, bits per byte. No record text, no secret, no weight, so nothing of the subject's data
survives in it (the organization is named, as it already is in ``erasures.jsonl``). ``evaluate`` reads it back with
:func:`load_captured` and :func:`load_captured_learned` when the model itself is gone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedunlearn.errors import DataError

__all__ = ["CAPTURE_FORMAT", "capture_before", "captured_path", "load_captured",
           "load_captured_learned"]

CAPTURE_FORMAT = "fedunlearn-before/1"


def captured_path(run_dir: str | Path, served_hash: str) -> Path:
    """Where the metrics captured for the served model ``served_hash`` are kept."""
    return Path(run_dir) / "evaluation" / "before" / f"{served_hash}.json"


def capture_before(run_dir: str | Path, subjects: Sequence[str], *, ledger: Any = None,
                   options: Any = None) -> Path | None:
    """Evaluate the model served now for each of ``subjects``; write it before an erasure purges it.

    The erasure service's pre-erasure hook (``before=`` of
    :func:`fedunlearn.unlearning.service.certified_erase`; ``fedunlearn forget`` passes it unless
    ``--no-capture-before``), run before anything changes. Idempotent (an existing capture of the
    same served model is kept) and silent where there is nothing to capture: no served model, a
    served model already purged (a resumed erasure), or a run without a synthetic consortium
    (organizations' own data cannot be audited here).

    Parameters
    ----------
    run_dir : path
    subjects : sequence of str
        The organizations about to be erased.
    ledger : Ledger, optional
        The open ledger of the run (opened here if omitted).
    options : EvaluationOptions, optional
        Baseline canaries, fidelity texts and exposure batch size (defaults otherwise).

    Returns
    -------
    Path or None
        The capture file, or None when nothing was captured.
    """
    from fedunlearn.evaluate.informative import fit_unigram, served_figures
    from fedunlearn.evaluate.onemodel import AuditContext, evaluate_model
    from fedunlearn.evaluate.runmodels import load_base, merged_model, run_consortium, served_history
    from fedunlearn.evaluate.options import EvaluationOptions
    from fedunlearn.evaluate.summary import model_dict, to_jsonable
    from fedunlearn.ledger import Ledger
    from fedunlearn.runs import RunFolder
    from fedunlearn.training.client import lora_spec

    run = RunFolder.open(Path(run_dir))
    if ledger is None:
        with Ledger.open(run.path) as opened:
            return capture_before(run_dir, subjects, ledger=opened, options=options)
    current = ledger.served()
    if current is None:
        return None
    served_hash = current["served_hash"]
    path = captured_path(run.path, served_hash)
    if path.is_file():
        return path
    state = served_history(ledger).get(served_hash)
    if state is None:
        return None
    try:
        consortium = run_consortium(run)
    except DataError:
        return None
    opts = options or EvaluationOptions()
    base = load_base(run)
    model = merged_model(base, state.states, state.weights, lora_spec(run.settings).scaling)
    evaluated: dict[str, Any] = {}
    known: dict[str, Any] = {}
    for org in subjects:
        ctx = AuditContext.build(consortium, org, subjects, opts, tokenizer=base.tokenizer,
                                 max_length=run.settings.data.max_length)
        evaluation, _ = evaluate_model(ctx, "before", "before", model, served=served_hash, full=True,
                                       delta=float(run.settings.dp.delta), baseline=False)
        evaluated[org] = model_dict(evaluation) | {"captured_at_erasure": True}
        if evaluation.exposure is not None:
            known[org] = evaluation.exposure
    # what the model learned of every organization, read by `informative` after the purge: bits per byte
    # (about 0.2 s per organization on the default model) and the subjects' exposures measured above;
    # other organizations' and never-inserted canaries are not scored (about 2 s each at 4 digits)
    learned = served_figures(model, consortium, base.tokenizer, fit_unigram(consortium, base.tokenizer).model,
                             max_length=run.settings.data.max_length)
    learned = dataclasses.replace(learned, exposure={k: v.mean_exposure for k, v in known.items()})
    doc = to_jsonable({"format": CAPTURE_FORMAT, "served_hash": served_hash, "subjects": list(subjects),
                       "evaluations": evaluated, "learned": learned.to_dict()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_captured(run_dir: str | Path, served_hash: str, org: str) -> Mapping[str, Any] | None:
    """The JSON form of the "before" model of ``org`` captured for ``served_hash`` (None if none)."""
    path = captured_path(run_dir, served_hash)
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != CAPTURE_FORMAT or doc.get("served_hash") != served_hash:
        raise DataError(f"{path} is not a capture of served model {served_hash} in format {CAPTURE_FORMAT}; "
                        "delete it (the pre-erasure model is then reported as unavailable)")
    return doc.get("evaluations", {}).get(org)


def load_captured_learned(run_dir: str | Path, served_hash: str) -> Any:
    """What the model ``served_hash`` had learned of every organization, captured at erasure time.

    Returns
    -------
    ServedFigures or None
        None when nothing was captured, or the capture predates these figures.
    """
    from fedunlearn.evaluate.informative import ServedFigures

    path = captured_path(run_dir, served_hash)
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != CAPTURE_FORMAT or doc.get("served_hash") != served_hash or not doc.get("learned"):
        return None
    return ServedFigures.from_dict(doc["learned"])
