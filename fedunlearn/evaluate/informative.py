"""What the served model learned of each organization, and whether forgetting figures can mean anything.

Forgetting is measured as a drop (exposure, membership AUC, memorization): a model that never learned
the subject's text has nothing to drop, and those figures are noise. Per organization: bits per byte
(:mod:`fedunlearn.models.bitsperbyte`) on its holdout of a uniform guess, a unigram model, the base
and the served models before and after the erasure; and the mean exposure of its inserted canaries
under the model served before the erasure, against never-inserted ones.

**The rule** (:func:`forgetting_verdict`): forgetting figures for the subject are *uninformative*
when, before the erasure, its mean inserted-canary exposure was not above the never-inserted 95th
percentile, never taken below :func:`chance_p95` (the p95 of a secret ranked by chance, which a
few never-inserted canaries underestimate; the threshold alone when a purged model's figures were
captured at erasure time without never-inserted canaries). Without canaries they are uninformative
when the served model's bits per byte on the subject's holdout was not below the unigram baseline.
Without pre-erasure figures the verdict is unknown (``None``), never "informative" by default.

The unigram model is fitted on the consortium's public documents (text the base model was
pre-trained on) when there are at least :data:`MIN_PUBLIC_DOCUMENTS`, else on every organization's
training records (canary copies left out); holdout records are never used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedunlearn.data import Canary, Consortium
from fedunlearn.evaluate.exposure import ExposureReport, canary_exposure
from fedunlearn.models.bitsperbyte import BitsPerByte, UnigramModel, bits_per_byte

__all__ = ["LearnedReport", "MIN_PUBLIC_DOCUMENTS", "OrganizationLearned", "RULE", "ServedFigures", "UnigramFit",
           "Verdict", "chance_p95", "fit_unigram", "forgetting_verdict", "learned_report", "served_figures"]

#: Public documents needed to fit the unigram baseline on them rather than on training records.
MIN_PUBLIC_DOCUMENTS = 50

RULE = ("forgetting figures for the subject are uninformative when, before the erasure, its mean inserted-canary "
        "exposure was not above the never-inserted 95th percentile (never taken below that of a secret ranked by "
        "chance); without canaries, when the served model's bits per byte on its holdout were not below the "
        "unigram baseline")


@dataclass(frozen=True)
class UnigramFit:
    """The unigram baseline; ``source``: ``public`` or ``training`` (what its ``documents`` were)."""

    model: UnigramModel
    source: str
    documents: int


def fit_unigram(consortium: Consortium, tokenizer: Any, *, min_public: int = MIN_PUBLIC_DOCUMENTS) -> UnigramFit:
    """Fit the unigram baseline on public text when there is enough of it, else on training records."""
    if len(consortium.public) >= min_public:
        texts, source = list(consortium.public), "public"
    else:  # canary copies (ids "<id>#k") are no organization's text
        texts, source = [r.text for o in consortium.organizations for r in o.train if "#" not in r.id], "training"
    return UnigramFit(UnigramModel(tokenizer, texts), source, len(texts))


@dataclass(frozen=True)
class ServedFigures:
    """What one model knows of each organization.

    Attributes
    ----------
    bits_per_byte : Mapping[str, BitsPerByte]
        Organization -> bits per byte on its holdout (organizations without holdout absent).
    exposure : Mapping[str, float]
        Organization -> mean exposure (bits) of its inserted canaries; empty when not measured.
    never_inserted : tuple of float
        Exposures of never-inserted canaries; empty when not measured.
    """

    bits_per_byte: Mapping[str, BitsPerByte]
    exposure: Mapping[str, float]
    never_inserted: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"bits_per_byte": {k: v.as_dict() for k, v in self.bits_per_byte.items()},
                "exposure": dict(self.exposure), "never_inserted": list(self.never_inserted)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ServedFigures:
        """The inverse of :meth:`to_dict` after JSON (``null`` read back as NaN)."""
        num = lambda v: float("nan") if v is None else float(v)  # noqa: E731
        bits = {k: BitsPerByte(**{f: int(x) if f in ("texts", "tokens", "bytes") else num(x) for f, x in v.items()})
                for k, v in doc["bits_per_byte"].items()}
        return cls(bits, {k: num(v) for k, v in doc.get("exposure", {}).items()},
                   tuple(num(v) for v in doc.get("never_inserted", ())))


def served_figures(model: nn.Module, consortium: Consortium, tokenizer: Any, unigram: UnigramModel, *,
                   max_length: int, canaries: bool = False, never: Sequence[Canary] = (),
                   known: Mapping[str, ExposureReport] | None = None, batch_size: int = 2048) -> ServedFigures:
    """Measure ``model`` on every organization: bits per byte and, with ``canaries``, exposures.

    Parameters
    ----------
    max_length, batch_size : int
        Context window of both scorings (the run's ``data.max_length``); candidates per prefix tree.
    canaries : bool
        Also score each organization's inserted canaries and the ``never``-inserted ones (for the
        model served before the erasure: the rule reads exposure before).
    known : Mapping[str, ExposureReport], optional
        Organization -> exposures already measured on this model: reused (their baseline too).
    """
    bits = {o.name: bits_per_byte(o.texts("holdout"), tokenizer, unigram=unigram, model=model, max_length=max_length)
            for o in consortium.organizations if any(o.texts("holdout"))}
    if not canaries:
        return ServedFigures(bits, {})
    known = dict(known or {})
    space, memo, scored = consortium.canary_space, {}, {}
    candidates = space.candidates()

    def exposures(items: Sequence[Canary]) -> list[float]:  # one scoring of the space per template
        return [canary_exposure(model, tokenizer, c, space, max_length=max_length, batch_size=batch_size,
                                candidates=candidates, memo=memo, scored=scored).exposure for c in items]

    exposure = {o.name: float(known[o.name].mean_exposure) if o.name in known else float(np.mean(exposures(o.canaries)))
                for o in consortium.organizations if o.canaries}
    baseline = next((tuple(r.exposure for r in rep.baseline) for rep in known.values() if rep.baseline), None)
    return ServedFigures(bits, exposure, baseline if baseline is not None else tuple(exposures(never)))


@dataclass(frozen=True)
class Verdict:
    """Whether the subject's forgetting figures can mean anything (see the module docstring).

    Attributes
    ----------
    subject : str
    uninformative : bool or None
        True: the model had not learned what was to be forgotten; None: nobody can tell.
    criterion : str
        ``canary-exposure``, ``bits-per-byte`` or ``unavailable``.
    reason : str
        One sentence with the numbers.
    exposure_before, never_inserted_p95, chance_p95, bits_per_byte_before, bits_per_byte_unigram : float or None
        The numbers the rule read (None where absent); the canary threshold is the larger p95.
    """

    subject: str
    uninformative: bool | None
    criterion: str
    reason: str
    exposure_before: float | None = None
    never_inserted_p95: float | None = None
    chance_p95: float | None = None
    bits_per_byte_before: float | None = None
    bits_per_byte_unigram: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"rule": RULE}


def chance_p95(candidates: int) -> float:
    """95th percentile of the exposure of a secret ranked uniformly at random among ``candidates``.

    ``log2(N / ceil(0.05 N))``: 4.32 bits for 100 or 10^4 candidates. A secret drawn uniformly,
    independently of the model, has a uniform rank whatever the model prefers: a never-inserted
    canary follows this law, and so does an inserted one the model did not learn. A p95 estimated
    from a few never-inserted canaries falls below it by chance (3 canaries gave 1.2 bits on the
    test run, where the base model, which saw no canary, gave the subject's canary 2.6).
    """
    return math.log2(candidates / max(1, math.ceil(0.05 * candidates)))


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def forgetting_verdict(subject: str, *, exposure_before: float | None, never_inserted_p95: float | None,
                       bits_per_byte_before: float | None, bits_per_byte_unigram: float | None,
                       candidates: int | None = None) -> Verdict:
    """Apply the rule to the subject's pre-erasure numbers (NaN or None = not measured).

    The canary criterion decides when the exposure before and a threshold exist: the larger of the
    never-inserted p95 and :func:`chance_p95` of ``candidates`` (the canary space's size). Else
    bits per byte against the unigram baseline decide; else the verdict is unknown.
    """
    e, emp, b, u = (_finite(x) for x in (exposure_before, never_inserted_p95, bits_per_byte_before,
                                         bits_per_byte_unigram))
    chance = chance_p95(candidates) if candidates else None
    numbers = dict(exposure_before=e, never_inserted_p95=emp, chance_p95=chance, bits_per_byte_before=b,
                   bits_per_byte_unigram=u)
    head = f"forgetting figures for {subject} are"
    if e is not None and (emp is not None or chance is not None):
        p95 = max(x for x in (emp, chance) if x is not None)
        level = f"p95 {p95:.1f} bits" if emp is not None and emp >= p95 else (
            f"p95 {p95:.1f} bits, that of a secret ranked by chance"
            + ("" if emp is None else f"; the never-inserted canaries gave {emp:.1f}"))
        if e <= p95 + 1e-9:  # at the p95 is not above it, whatever the rounding of log2(N) - log2(rank)
            return Verdict(subject, True, "canary-exposure", (
                f"{head} uninformative: before erasure its canaries' exposure {e:.1f} bits was at the never-inserted "
                f"level ({level}); the model never learned what was to be forgotten"), **numbers)
        return Verdict(subject, False, "canary-exposure", (
            f"{head} informative: before erasure its canaries' exposure {e:.1f} bits was above the never-inserted "
            f"level ({level})"), **numbers)
    if b is not None and u is not None:
        said = f"before erasure the served model needed {b:.3f} bits per byte on its holdout"
        if b >= u:
            return Verdict(subject, True, "bits-per-byte", (
                f"{head} uninformative: {said}, not below the unigram baseline ({u:.3f}); the model never learned "
                "more than word frequencies of what was to be forgotten"), **numbers)
        return Verdict(subject, False, "bits-per-byte",
                       f"{head} informative: {said}, below the unigram baseline ({u:.3f})", **numbers)
    return Verdict(subject, None, "unavailable", (
        f"cannot tell whether {head} informative: nothing was measured on the model served before the erasure "
        "(purged, and not captured with these figures at erasure time)"), **numbers)


@dataclass(frozen=True)
class OrganizationLearned:
    """One row of the "what the model learned" table: holdout ``texts`` and ``bytes``, the ``uniform``
    and ``unigram`` baselines and ``models`` (name -> bits per byte), the organization's inserted
    ``canaries`` and their mean exposure before the erasure (None if not measured)."""

    organization: str
    texts: int
    bytes: int
    uniform: float
    unigram: float
    models: Mapping[str, float]
    canaries: int
    exposure_before: float | None


@dataclass(frozen=True)
class LearnedReport:
    """Per organization, what the models learned; and the verdict on the subject's forgetting figures.

    Attributes
    ----------
    subject, unigram_fit : str
        ``unigram_fit``: ``public`` or ``training`` (:func:`fit_unigram`), of ``unigram_documents``.
    before : str
        Source of the pre-erasure figures: ``model`` (rebuilt), ``captured`` (at erasure) or ``unavailable``.
    never_inserted_before : tuple of float
        Never-inserted canaries' exposures under the model served before the erasure.
    """

    subject: str
    unigram_fit: str
    unigram_documents: int
    before: str
    organizations: tuple[OrganizationLearned, ...]
    never_inserted_before: tuple[float, ...]
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        never = np.array(self.never_inserted_before, dtype=float)
        return {
            "rule": RULE, "unigram_fit": self.unigram_fit, "unigram_documents": self.unigram_documents,
            "before": self.before,
            "never_inserted_before": {"canaries": int(never.size), "mean": float(never.mean()),
                                      "p95": float(np.percentile(never, 95)),
                                      "chance_p95": self.verdict.chance_p95} if never.size else None,
            "organizations": [{"organization": o.organization, "subject": o.organization == self.subject,
                               "texts": o.texts, "bytes": o.bytes, "canaries": o.canaries,
                               "exposure_before": o.exposure_before,
                               "bits_per_byte": {"uniform": o.uniform, "unigram": o.unigram, **o.models}}
                              for o in self.organizations],
        }


def learned_report(consortium: Consortium, subject: str, fit: UnigramFit, models: Mapping[str, ServedFigures], *,
                   before_source: str) -> LearnedReport:
    """Tabulate ``models`` (``base`` first; ``before`` when measured or captured) and judge the subject."""
    base, before = models["base"], models.get("before")
    rows = tuple(OrganizationLearned(
        organization=o.name, texts=ref.texts, bytes=ref.bytes, uniform=ref.uniform, unigram=ref.unigram,
        models={n: m.bits_per_byte[o.name].model for n, m in models.items() if o.name in m.bits_per_byte},
        canaries=len(o.canaries), exposure_before=None if before is None else _finite(before.exposure.get(o.name)))
        for o in consortium.organizations if (ref := base.bits_per_byte.get(o.name)) is not None)
    never = () if before is None else tuple(before.never_inserted)
    mine = before.bits_per_byte.get(subject) if before is not None else None
    verdict = forgetting_verdict(
        subject, exposure_before=None if before is None else before.exposure.get(subject),
        never_inserted_p95=float(np.percentile(never, 95)) if never else None,
        bits_per_byte_before=None if mine is None else mine.model,
        bits_per_byte_unigram=None if subject not in base.bits_per_byte else base.bits_per_byte[subject].unigram,
        candidates=consortium.canary_space.size)
    return LearnedReport(subject, fit.source, fit.documents, "unavailable" if before is None else before_source,
                         rows, never, verdict)
