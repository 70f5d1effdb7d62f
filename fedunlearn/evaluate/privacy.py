"""The empirical privacy audit of an evaluated erasure: ε lower bounds checked against certificates.

Every evaluated model gets an ε lower bound from the membership guesses of the MIAs on the
subject's records (members: its training records; non-members: its holdout, drawn from the same
distribution): Clopper-Pearson (Jagielski et al. 2020, :mod:`~fedunlearn.evaluate.lower_bound`),
threshold chosen on half of the records and counted on the other half. Each of the membership
scores (loss, zlib, Min-K%, Min-K%++) gives a bound at confidence ``1 − (1 − c)/k`` and the largest
is kept: by the union bound the reported ε holds with confidence ``c`` (no score is picked after
looking at the counted half).

A certificate makes a claim about the model its erasure produced:

* ``exact`` — the model does not depend on the subject at all: ε = 0, δ = 0.
* ``certified`` — (ε, δ) from the accountant.
* ``empirical`` — no ε is claimed; nothing to refute.

:func:`check_certificates` audits the erased model at the certificate's δ and flags the
certificate when its ε is below the measured lower bound (``consistent: false``, REFUTED).
Caveat stated in every result: the trials are the subject's records in one training run, treated
as independent membership trials; a certificate protects the organization, which implies the
same bound for each of its records (one record's change is a change of the organization's data).

**One-run audit with audit canaries** (Steinke, Nasr, Jagielski 2023). The Clopper-Pearson trials
above are not independently randomized (the records were chosen, not coin-flipped), so that bound
is heuristic. When the consortium has audit canaries (``data.audit-canaries-per-org``, see
:mod:`~fedunlearn.data.synthetic`), each of the subject's ``m`` audit records was included in its
training data by an independent keyed Bernoulli(½) coin, which the auditor recomputes from the data
seed. :func:`audit_one_run` scores every audit canary on the model (``-loss``, fixed in advance),
guesses the top ``k = ⌊m·guess_fraction⌋`` "included" and the bottom ``k`` "excluded", and turns
the number of right guesses into the one-run ε lower bound — a statement with the paper's
guarantee. What it audits: one record's inclusion, i.e. *record-level* DP (DP-SGD, and any
organization-level guarantee, which implies the same ε for one record). Organization-level
canaries (whole organizations joining by a coin, to audit DP-FedAvg at its own unit) are
:mod:`~fedunlearn.evaluate.canary_orgs` (``dp.audit-canary-orgs``); they check ``certified``
claims through the accountant's ε for the canaries.
:func:`check_certificates` flags a certificate whose ε is below either bound (each holds at 95%
confidence; by the union bound a flag from either is wrong with probability at most 10%, and the
one-run bound alone rests on randomized trials).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedunlearn.evaluate._common import check_fraction
import numpy as np

from fedunlearn.errors import ConfigError
from fedunlearn.evaluate.lower_bound import (
    ClopperPearsonBound,
    OneRunBound,
    check_certificate,
    epsilon_lower_bound_from_scores,
    one_run_lower_bound_from_scores,
)
from fedunlearn.evaluate.scores import SCORE_NAMES, SequenceScores

__all__ = ["EpsilonAudit", "OneRunAudit", "audit_membership", "audit_one_run", "certificate_claim",
           "check_certificates"]

#: Share of the audit canaries guessed "included" (top scores), and the same share "excluded".
GUESS_FRACTION = 0.25
ONE_RUN_NOTE = ("each audit canary was included in the subject's training data by an independent keyed "
                "Bernoulli(1/2) coin (Steinke et al. 2023); audits record-level privacy")

TRIALS_NOTE = ("trials are the subject's training records against its holdout in one run, treated as "
               "independent membership trials")


@dataclass(frozen=True)
class EpsilonAudit:
    """The ε lower bound of one model from membership guesses on the subject's records.

    Attributes
    ----------
    bound : ClopperPearsonBound
        The largest bound over the scores (its ``confidence`` is per score, Bonferroni-corrected).
    score : str
        The membership score that gave it.
    confidence : float
        Overall confidence of ``bound.epsilon`` being <= the true ε (union bound over the scores).
    """

    bound: ClopperPearsonBound
    score: str
    confidence: float

    @property
    def epsilon(self) -> float:
        return self.bound.epsilon

    def to_dict(self) -> dict[str, Any]:
        b = self.bound
        return {"epsilon": b.epsilon, "delta": b.delta, "confidence": self.confidence, "score": self.score,
                "method": "clopper-pearson", "false_positives": b.false_positives, "negatives": b.negatives,
                "false_negatives": b.false_negatives, "positives": b.positives, "threshold": b.threshold,
                "note": TRIALS_NOTE}


def audit_membership(members: SequenceScores, nonmembers: SequenceScores, *, delta: float = 0.0,
                     confidence: float = 0.95, scores: Sequence[str] = SCORE_NAMES) -> EpsilonAudit:
    """ε lower bound (Clopper-Pearson, best of ``scores`` with a union bound) from one model's scores.

    Parameters
    ----------
    members, nonmembers : SequenceScores
        Scores of the subject's training records and of its holdout under the audited model
        (at least 4 of each: half chooses the threshold, half is counted).
    delta : float, default 0
        The δ of the claim audited.
    confidence : float, default 0.95

    Returns
    -------
    EpsilonAudit
    """
    level = check_fraction("confidence", confidence, hint="use e.g. 0.95")
    per_score = 1.0 - (1.0 - level) / max(len(scores), 1)
    best: tuple[ClopperPearsonBound, str] | None = None
    for name in scores:
        bound = epsilon_lower_bound_from_scores(members.membership(name), nonmembers.membership(name),
                                                delta=delta, confidence=per_score)
        if best is None or bound.epsilon > best[0].epsilon:
            best = (bound, name)
    assert best is not None
    return EpsilonAudit(bound=best[0], score=best[1], confidence=level)


@dataclass(frozen=True)
class OneRunAudit:
    """The one-run ε lower bound of one model from its scores of the subject's audit canaries.

    Attributes
    ----------
    bound : OneRunBound
    included : np.ndarray
        ``[m]`` the canaries' coins.
    scores : np.ndarray
        ``[m]`` membership scores (``-loss``) under the model, kept to re-audit at another δ.
    guess_fraction : float
    """

    bound: OneRunBound
    included: np.ndarray
    scores: np.ndarray
    guess_fraction: float = GUESS_FRACTION

    @property
    def epsilon(self) -> float:
        return self.bound.epsilon

    def at_delta(self, delta: float) -> OneRunAudit:
        """The same guesses audited at another δ (a certificate's)."""
        return audit_one_run(self.included, self.scores, delta=delta, confidence=self.bound.confidence,
                             guess_fraction=self.guess_fraction)

    def to_dict(self) -> dict[str, Any]:
        b = self.bound
        return {"epsilon": b.epsilon, "delta": b.delta, "confidence": b.confidence, "method": "one-run",
                "score": "loss", "canaries": b.canaries, "included": int(self.included.sum()),
                "guesses": b.guesses, "correct": b.correct, "note": ONE_RUN_NOTE}


def audit_one_run(included: Any, scores: Any, *, delta: float = 0.0, confidence: float = 0.95,
                  guess_fraction: float = GUESS_FRACTION) -> OneRunAudit:
    """Steinke et al. (2023) one-run ε lower bound from audit canaries' coins and membership scores.

    Parameters
    ----------
    included : array-like of bool
        ``[m]`` the coins (at least 4 canaries).
    scores : array-like of float
        ``[m]`` higher meaning "more likely included".
    delta, confidence : float
    guess_fraction : float, default 0.25
        ``k = max(1, ⌊m·guess_fraction⌋)`` top canaries are guessed in, ``k`` bottom ones out,
        fixed before scoring.

    Returns
    -------
    OneRunAudit
    """
    truth = np.asarray(included, dtype=bool)
    values = np.asarray(scores, dtype=float)
    if truth.size < 4:
        raise ConfigError(f"{truth.size} audit canaries cannot give a one-run bound; expected at least 4 "
                          "(set data.audit-canaries-per-org to e.g. 64)")
    frac = check_fraction("guess_fraction", guess_fraction, hint="use e.g. 0.25")
    if frac > 0.5:
        raise ConfigError(f"guess_fraction = {guess_fraction!r} is invalid; expected at most 0.5 (k in + k out "
                          "guesses must fit in the m canaries)")
    k = max(1, int(truth.size * frac))
    bound = one_run_lower_bound_from_scores(truth, values, guesses_in=k, guesses_out=k, delta=delta,
                                            confidence=confidence)
    return OneRunAudit(bound=bound, included=truth, scores=values, guess_fraction=frac)


def certificate_claim(body: Mapping[str, Any]) -> tuple[float, float] | None:
    """The (ε, δ) a certificate body claims for its erased model; None when it claims none."""
    guarantee = body.get("guarantee") or {}
    kind = guarantee.get("kind")
    if kind == "exact":
        return 0.0, 0.0
    if kind == "certified" and guarantee.get("epsilon") is not None:
        return float(guarantee["epsilon"]), float(guarantee.get("delta") or 0.0)
    return None


def check_certificates(run_dir: str | Path, erasures: Sequence[Mapping[str, Any]],
                       scores: Mapping[str, tuple[SequenceScores, SequenceScores]], *,
                       confidence: float = 0.95,
                       one_run: Mapping[str, OneRunAudit] | None = None,
                       canary_orgs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Check the certificate of every erasure against the lower bound measured on its erased model.

    Parameters
    ----------
    run_dir : path
    erasures : sequence of mapping
        Rows of ``erasures.jsonl`` (``method``, ``served_hash``).
    scores : mapping
        ``after:<method>`` model name -> (member scores, holdout scores).
    one_run : mapping, optional
        ``after:<method>`` model name -> its one-run audit (consortia with audit canaries); re-audited
        at the claim's δ. The certificate is refuted when its ε is below either bound.
    canary_orgs : mapping, optional
        ``after:<method>`` model name -> its canary-organization audit
        (:class:`~fedunlearn.evaluate.canary_orgs.CanaryOrgAudit`, runs with ``dp.audit-canary-orgs``).
        It audits client-level DP, so it checks ``certified`` (DP-FedAvg) claims only: such a
        certificate is refuted when the accountant's ε for the canaries (an organization in every
        round), at the claim's δ, is below the canaries' bound — the accountant that produced the
        claim is then wrong. (The subject's own ε may be smaller when it joined later; the canary
        bound does not speak to that difference.)

    Returns
    -------
    list of dict
        One per certificate found: its file and digest, the claim, the bound at the claim's δ,
        ``consistent`` (False = the certificate is refuted) and a one-sentence ``message``.
    """
    from fedunlearn.certify.amend import find_certificate

    out: list[dict[str, Any]] = []
    for erasure in erasures:
        name = f"after:{erasure['method']}"
        cert = find_certificate(run_dir, str(erasure["served_hash"]))
        if cert is None or name not in scores:
            continue
        claim = certificate_claim(cert.body)
        row: dict[str, Any] = {"certificate": cert.path.name if cert.path else None, "digest": cert.digest,
                               "model": name, "guarantee": (cert.body.get("guarantee") or {}).get("kind")}
        if claim is None:
            row.update(consistent=None, message="the certificate claims no ε (empirical guarantee); nothing to check")
        else:
            eps, delta = claim
            audit = audit_membership(*scores[name], delta=delta, confidence=confidence)
            check = check_certificate(eps, audit.bound)
            claim_text = f"{row['guarantee']} certificate claims ε = {eps:.4g} (δ = {delta:g})"
            measured = (f"measured ε ≥ {audit.epsilon:.4g} on {name} ({100 * audit.confidence:g}% confidence, "
                        f"best of {len(SCORE_NAMES)} MIA scores, {audit.score})")
            run_audit = one_run[name].at_delta(delta) if one_run and name in one_run else None
            if run_audit is not None:
                b = run_audit.bound
                measured += (f"; one-run ε ≥ {b.epsilon:.4g} ({100 * b.confidence:g}% confidence, "
                             f"{b.correct}/{b.guesses} right guesses on {b.canaries} audit canaries)")
                check = check_certificate(eps, audit.bound if audit.epsilon >= b.epsilon else b)
                row["lower_bound_one_run"] = run_audit.to_dict()
            consistent = check.consistent
            canary = canary_orgs.get(name) if canary_orgs and row["guarantee"] == "certified" else None
            if canary is not None:
                c = canary.at_delta(delta)
                row["lower_bound_canary_orgs"] = {k: v for k, v in c.to_dict().items() if k != "scores"}
                if c.accounted_epsilon is not None:
                    cb = c.audit.bound
                    measured += (f"; canary organizations ε ≥ {cb.epsilon:.4g} ({100 * cb.confidence:g}% confidence, "
                                 f"{cb.correct}/{cb.guesses} right guesses on {cb.canaries}) against the "
                                 f"accountant's ε = {c.accounted_epsilon:.4g} for an organization in every round")
                    consistent = consistent and c.consistent is not False
            message = (f"{claim_text}, consistent with the {measured}" if consistent else
                       f"{claim_text}: REFUTED by the {measured}; the certificate overstates the guarantee")
            row.update(epsilon_certified=eps, delta=delta, lower_bound=audit.to_dict(),
                       consistent=consistent, message=message)
        out.append(row)
    return out
