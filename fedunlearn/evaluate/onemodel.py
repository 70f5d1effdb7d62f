"""Every metric of one model in an erasure's evaluation, shared by ``evaluate`` and the capture at erasure.

:class:`AuditContext` fixes what is audited for one subject (its training records without canary
copies, its holdout, its canaries and the never-inserted baseline, the evaluation prompts);
:func:`evaluate_model` measures one model on it: MIAs, exposure, and for a *full* evaluation
memorization, utility, next-token KL to a reference retrain and the ε lower bounds (Clopper-Pearson
on the MIA guesses; one-run on the subject's audit canaries when the consortium has them).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedunlearn.data import Canary, Consortium, OrganizationData
from fedunlearn.data.synthetic import AuditCanary, consortium_audit_canaries
from fedunlearn.evaluate.exposure import exposure_report
from fedunlearn.evaluate.fidelity import mean_next_token_kl
from fedunlearn.evaluate.memorization import memorization
from fedunlearn.evaluate.mia import mia_results
from fedunlearn.evaluate.privacy import audit_membership, audit_one_run
from fedunlearn.evaluate.scores import SequenceScores, score_texts
from fedunlearn.evaluate.summary import ModelEvaluation
from fedunlearn.evaluate.utility import utility_report

__all__ = ["AuditContext", "evaluate_model"]


@dataclass(frozen=True)
class AuditContext:
    """What is audited for one subject organization.

    Attributes
    ----------
    consortium : Consortium
    subject : OrganizationData
    subjects : tuple of str
        Everyone erased together (left out of utility).
    members : tuple of str
        The subject's training records, canary copies (ids ``<id>#k``) left out: exposure audits those.
    holdout : tuple of str
    never : tuple of Canary
        Never-inserted canaries scored as the exposure baseline.
    prompts : tuple of str
        Evaluation prompts of the KL: retained organizations' holdouts, then public text.
    exposure_batch_size : int
    tokenizer : object
    max_length : int
    audit_canaries : tuple of AuditCanary
        The subject's audit canaries with their coins (empty when the consortium has none).
    """

    consortium: Consortium
    subject: OrganizationData
    subjects: tuple[str, ...]
    members: tuple[str, ...]
    holdout: tuple[str, ...]
    never: tuple[Canary, ...]
    prompts: tuple[str, ...]
    exposure_batch_size: int
    tokenizer: Any
    max_length: int
    audit_canaries: tuple[AuditCanary, ...] = ()

    @classmethod
    def build(cls, consortium: Consortium, org: str, subjects: Sequence[str], options: Any, *,
              tokenizer: Any, max_length: int) -> AuditContext:
        """The context of ``org`` with ``options`` (an :class:`~fedunlearn.evaluate.suite.EvaluationOptions`)."""
        subject = consortium.organization(org)
        retained = [o.name for o in consortium.organizations if o.name not in subjects]
        prompts = [t for n in retained for t in consortium.organization(n).texts("holdout")]
        return cls(consortium=consortium, subject=subject, subjects=tuple(subjects),
                   members=tuple(r.text for r in subject.train if "#" not in r.id),
                   holdout=tuple(subject.texts("holdout")),
                   never=tuple(consortium.never_inserted[: options.baseline_canaries]),
                   prompts=tuple((prompts + list(consortium.public))[: options.fidelity_texts]),
                   exposure_batch_size=options.exposure_batch_size, tokenizer=tokenizer, max_length=max_length,
                   audit_canaries=consortium_audit_canaries(consortium, org))


def evaluate_model(ctx: AuditContext, name: str, kind: str, model: nn.Module, *, served: str | None, full: bool,
                   audit: Sequence[str] | None = None, reference: nn.Module | None = None,
                   delta: float = 0.0, baseline: bool = True) -> tuple[ModelEvaluation, tuple[SequenceScores, SequenceScores]]:
    """Measure ``model``; return its evaluation and its (member, holdout) membership scores.

    ``full`` adds memorization, utility, the baseline canaries (unless ``baseline`` is False), the ε
    lower bounds (at ``delta``; the one-run bound when the subject has audit canaries) and, with a
    ``reference``, the KL to it. ``audit`` replaces the member records (relearning attacks
    audit the records the attacker did not get).
    """
    start = time.perf_counter()
    tok, max_len = ctx.tokenizer, ctx.max_length
    texts = list(audit) if audit is not None else list(ctx.members)
    member_scores = score_texts(model, tok, texts, max_length=max_len)
    holdout_scores = score_texts(model, tok, list(ctx.holdout), max_length=max_len)
    mia = mia_results(member_scores, holdout_scores)
    exposure = exposure_report(model, tok, ctx.subject.canaries, ctx.never if full and baseline else (),
                               ctx.consortium.canary_space, max_length=max_len,
                               batch_size=ctx.exposure_batch_size) if ctx.subject.canaries else None
    mem = memorization(model, tok, list(ctx.members), max_length=max_len) if full else None
    utility = utility_report(model, tok, ctx.consortium, erased=ctx.subjects, max_length=max_len) if full else None
    kl = mean_next_token_kl(reference, model, tok, list(ctx.prompts), max_length=max_len).mean \
        if full and reference is not None else None
    bound = audit_membership(member_scores, holdout_scores, delta=delta) \
        if full and min(len(texts), len(ctx.holdout)) >= 4 else None
    one_run = None
    if full and len(ctx.audit_canaries) >= 4:
        audit_scores = score_texts(model, tok, [a.text for a in ctx.audit_canaries], max_length=max_len)
        one_run = audit_one_run([a.included for a in ctx.audit_canaries], audit_scores.membership("loss"),
                                delta=delta)
    evaluation = ModelEvaluation(name=name, kind=kind, served_hash=served, mia=mia, exposure=exposure,
                                 memorization=mem, utility=utility, kl_to_retrain=kl,
                                 seconds=time.perf_counter() - start, epsilon_audit=bound,
                                 one_run_audit=one_run)
    return evaluation, (member_scores, holdout_scores)
