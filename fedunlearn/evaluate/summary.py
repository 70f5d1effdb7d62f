"""Result containers of the evaluation suite and their JSON form.

:class:`ModelEvaluation` holds the full metric objects of one model; :meth:`SuiteResult.to_dict`
turns everything into plain JSON (ROC curves thinned to at most 101 points, arrays to lists,
non-finite floats to ``null``), which the report and the certificate read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedunlearn.evaluate.exposure import ExposureReport
from fedunlearn.evaluate.fidelity import RetrainSpread
from fedunlearn.evaluate.memorization import MemorizationResult
from fedunlearn.evaluate.mia import MiaResult
from fedunlearn.evaluate.utility import UtilityReport

__all__ = ["ModelEvaluation", "SuiteResult", "learned_summary", "model_dict", "model_summary", "to_jsonable"]

_ROC_POINTS = 101


@dataclass(frozen=True)
class ModelEvaluation:
    """Every metric measured on one model.

    Attributes
    ----------
    name : str
        ``base``, ``before``, ``after:<method>``, ``retrain``, ``relearn:<method>``,
        ``relearn:retrain`` or ``quant<bits>:<method>``.
    kind : str
        ``base`` | ``before`` | ``after`` | ``retrain`` | ``relearn`` | ``quantized``.
    served_hash : str or None
        The served model's hash when it was one.
    mia : Mapping[str, MiaResult]
        Per score (loss, zlib, min_k, min_k_plus_plus); for ``relearn`` models on the audit part
        of the subject's records only.
    exposure : ExposureReport or None
        None when the subject has no canaries. Attacked models score no baseline canaries.
    memorization, utility : optional
        Measured on base/before/after/retrain models only.
    kl_to_retrain : float or None
        Mean next-token KL(retrain seed 0 || model), nats.
    seconds : float
    epsilon_audit : EpsilonAudit or None
        ε lower bound from the MIA guesses (full evaluations only), see
        :mod:`~fedunlearn.evaluate.privacy`.
    one_run_audit : OneRunAudit or None
        One-run ε lower bound on the subject's audit canaries (full evaluations of consortia with
        audit canaries only).
    canary_org_audit : CanaryOrgAudit or None
        One-run ε lower bound from the run's canary organizations (served models of runs with
        ``dp.audit-canary-orgs`` >= 4), checked against the accountant's client-level ε, see
        :mod:`~fedunlearn.evaluate.canary_orgs`.
    """

    name: str
    kind: str
    served_hash: str | None
    mia: Mapping[str, MiaResult]
    exposure: ExposureReport | None
    memorization: MemorizationResult | None
    utility: UtilityReport | None
    kl_to_retrain: float | None
    seconds: float
    epsilon_audit: Any = None
    one_run_audit: Any = None
    canary_org_audit: Any = None


@dataclass(frozen=True)
class SuiteResult:
    """The evaluation of one organization's erasure(s) in one run.

    Attributes
    ----------
    run, subject : str
    subjects : tuple of str
        Everyone erased together with ``subject`` (left out of retrains and utility).
    erasures : tuple of dict
        Method, guarantee, served hashes and costs from ``erasures.jsonl``.
    models : tuple of ModelEvaluation
    spread : RetrainSpread or None
        KL between retrains of different seeds (None with one seed).
    privleak : Mapping[str, Mapping[str, float]]
        Model name -> score -> MUSE PrivLeak relative to the retrain.
    relearn_split : tuple of int
        (records given to the relearning attacker, records audited).
    options : EvaluationOptions
    timings : Mapping[str, float]
        Seconds per phase.
    notes : tuple of str
        What could not be evaluated and why (e.g. a model purged with an erased organization).
    certificate_checks : tuple of dict
        Each erasure certificate's claimed ε against the lower bound measured on its erased model
        (``consistent: false`` = refuted), see :func:`~fedunlearn.evaluate.privacy.check_certificates`.
    captured : tuple of dict
        Models evaluated at erasure time (the one served before an erasure that purged it), in
        their JSON form (:mod:`~fedunlearn.evaluate.before`).
    learned : LearnedReport or None
        Per organization, what the base and the served models learned of it (bits per byte
        against uniform and unigram baselines, canary exposure before the erasure), and the
        verdict on whether the subject's forgetting figures are informative
        (:mod:`~fedunlearn.evaluate.informative`).
    """

    run: str
    subject: str
    subjects: tuple[str, ...]
    erasures: tuple[Mapping[str, Any], ...]
    models: tuple[ModelEvaluation, ...]
    spread: RetrainSpread | None
    privleak: Mapping[str, Mapping[str, float]]
    relearn_split: tuple[int, int]
    options: Any
    timings: Mapping[str, float]
    notes: tuple[str, ...] = ()
    certificate_checks: tuple[Mapping[str, Any], ...] = ()
    captured: tuple[Mapping[str, Any], ...] = ()
    learned: Any = None

    def model(self, name: str) -> ModelEvaluation:
        """The evaluation of the model called ``name`` (KeyError-free: ConfigError naming the valid ones)."""
        for m in self.models:
            if m.name == name:
                return m
        from fedunlearn.errors import ConfigError

        raise ConfigError(f"no evaluated model {name!r}; expected one of {[m.name for m in self.models]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON of everything (see the module docstring)."""
        return to_jsonable({
            "format": "fedunlearn-evaluation/1", "run": self.run, "subject": self.subject,
            "subjects": list(self.subjects), "erasures": list(self.erasures),
            "models": [dict(c) for c in self.captured] + [model_dict(m) for m in self.models],
            "retrain_spread": None if self.spread is None else {"mean": self.spread.mean, "max": self.spread.max,
                                                                "pairwise": self.spread.pairwise},
            "privleak": self.privleak, "relearn_split": {"attack": self.relearn_split[0], "audit": self.relearn_split[1]},
            "options": dataclasses.asdict(self.options), "timings": dict(self.timings),
            "notes": list(self.notes), "certificate_checks": list(self.certificate_checks),
            "refuted_certificates": [c["certificate"] for c in self.certificate_checks if c.get("consistent") is False],
            "learned": None if self.learned is None else self.learned.to_dict(),
            "forgetting_verdict": None if self.learned is None else self.learned.verdict.to_dict(),
        })


def _thin(values: np.ndarray) -> list[float]:
    if values.size <= _ROC_POINTS:
        return values.tolist()
    idx = np.unique(np.linspace(0, values.size - 1, _ROC_POINTS).astype(int))
    return values[idx].tolist()


def model_dict(m: ModelEvaluation) -> dict[str, Any]:
    out: dict[str, Any] = {"name": m.name, "kind": m.kind, "served_hash": m.served_hash, "seconds": m.seconds,
                           "kl_to_retrain": m.kl_to_retrain}
    out["mia"] = {k: {"auc": r.auc, "tpr_at_fpr": r.tpr_at_fpr, "target_fpr": r.target_fpr,
                      "members": r.num_members, "nonmembers": r.num_nonmembers,
                      "roc": {"fpr": _thin(r.roc.fpr), "tpr": _thin(r.roc.tpr)}} for k, r in m.mia.items()}
    if m.exposure is not None:
        e = m.exposure
        out["exposure"] = {"mean": e.mean_exposure, "baseline_mean": e.baseline_mean, "baseline_p95": e.baseline_p95,
                           "max": e.inserted[0].max_exposure if e.inserted else None,
                           "inserted": [{"id": r.canary_id, "exposure": r.exposure, "rank": r.rank} for r in e.inserted],
                           "baseline": [r.exposure for r in e.baseline], "p_values": list(e.p_values)}
    if m.memorization is not None:
        out["memorization"] = {"exact_match_rate": m.memorization.exact_match_rate,
                               "mean_rouge_l": m.memorization.mean_rouge_l}
    if m.epsilon_audit is not None:
        out["epsilon_lower_bound"] = m.epsilon_audit.to_dict()
    if m.one_run_audit is not None:
        out["epsilon_lower_bound_one_run"] = m.one_run_audit.to_dict()
    if m.canary_org_audit is not None:
        out["epsilon_lower_bound_canary_orgs"] = m.canary_org_audit.to_dict()
    if m.utility is not None:
        u = m.utility
        out["utility"] = {"holdout": {k: {"loss": p.loss, "perplexity": p.perplexity} for k, p in u.holdout.items()},
                          "public": None if u.public is None else {"loss": u.public.loss,
                                                                   "perplexity": u.public.perplexity},
                          "mean_holdout_loss": u.mean_holdout_loss}
    return out


def model_summary(m: ModelEvaluation | Mapping[str, Any]) -> dict[str, Any]:
    """A few headline numbers of one model (for the certificate), from an evaluation or its JSON form."""
    d = m if isinstance(m, Mapping) else model_dict(m)
    out: dict[str, Any] = {"mia_auc": {k: r["auc"] for k, r in d["mia"].items()}}
    if d.get("exposure"):
        out["exposure_mean"] = d["exposure"]["mean"]
        out["exposure_baseline_p95"] = d["exposure"]["baseline_p95"]
    if d.get("utility"):
        out["mean_holdout_loss"] = d["utility"]["mean_holdout_loss"]
    if d.get("kl_to_retrain") is not None:
        out["kl_to_retrain"] = d["kl_to_retrain"]
    if d.get("epsilon_lower_bound"):
        out["epsilon_lower_bound"] = d["epsilon_lower_bound"]["epsilon"]
    if d.get("epsilon_lower_bound_one_run"):
        out["epsilon_lower_bound_one_run"] = d["epsilon_lower_bound_one_run"]["epsilon"]
    if d.get("epsilon_lower_bound_canary_orgs"):
        c = d["epsilon_lower_bound_canary_orgs"]
        out["epsilon_lower_bound_canary_orgs"] = c["epsilon"]
        if c.get("epsilon_accounted") is not None:
            out["canary_orgs_epsilon_accounted"] = c["epsilon_accounted"]
    if d.get("captured_at_erasure"):
        out["captured_at_erasure"] = True
    return to_jsonable(out)


def learned_summary(learned: Any) -> dict[str, Any]:
    """The certificate's part of a :class:`~fedunlearn.evaluate.informative.LearnedReport` (empty for None).

    ``forgetting_uninformative`` (true, false or null = unknown) and its reason with the numbers;
    ``subject_bits_per_byte``: the subject's holdout bits per byte (uniform, unigram, per model).
    """
    if learned is None:
        return {}
    mine = [o for o in learned.to_dict()["organizations"] if o["subject"]]
    return to_jsonable({"forgetting_uninformative": learned.verdict.uninformative,
                        "forgetting_verdict": learned.verdict.reason,
                        "forgetting_criterion": learned.verdict.criterion}
                       | ({"subject_bits_per_byte": mine[0]["bits_per_byte"]} if mine else {}))


def to_jsonable(value: Any) -> Any:
    """Arrays to lists, numpy scalars to Python, tuples to lists, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
