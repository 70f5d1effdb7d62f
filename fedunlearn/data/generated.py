"""The consortium a scenario generates when it names no data folder (``data.text``).

Synthetic templated records (:func:`~fedunlearn.data.generate_consortium`) or real text found on
this machine (:func:`~fedunlearn.data.realorgs.real_text_consortium`), deterministic from
``run.seed``, so that every node of a simulation agrees on it without exchanging data.
"""

from __future__ import annotations

import functools

from fedunlearn.config import Settings
from fedunlearn.data.records import Consortium
from fedunlearn.data.synthetic import generate_consortium
from fedunlearn.errors import ConfigError

__all__ = ["synthetic_consortium", "synthetic_key"]


@functools.lru_cache(maxsize=4)
def _synthetic(names: tuple[str, ...], data_key: tuple, seed: int):
    (records, holdout, canaries, repeats, digits, never, public, audit, text) = data_key
    if text == "real":
        from fedunlearn.data.realorgs import real_text_consortium

        if audit:
            raise ConfigError("data.audit-canaries-per-org needs data.text = \"synthetic\"; the real-text "
                              "consortium has no audit canaries: set it to 0")
        return real_text_consortium(
            organizations=names, records_per_org=records, holdout_per_org=holdout, canaries_per_org=canaries,
            canary_repeats=repeats, canary_digits=digits, never_inserted=never, public_documents=public, seed=seed,
        )
    return generate_consortium(
        organizations=names, records_per_org=records, holdout_per_org=holdout, canaries_per_org=canaries,
        canary_repeats=repeats, canary_digits=digits, never_inserted=never, public_documents=public, seed=seed,
        audit_canaries_per_org=audit,
    )


def synthetic_key(settings: Settings) -> tuple:
    d = settings.data
    return (d.records_per_org, d.holdout_per_org, d.canaries_per_org, d.canary_repeats, d.canary_digits,
            d.never_inserted, d.public_documents, d.audit_canaries_per_org, d.text)


def synthetic_consortium(settings: Settings) -> Consortium:
    """The generated consortium ``settings`` describe: synthetic records, or real text found on this
    machine when ``data.text = "real"`` (deterministic from ``run.seed`` on one machine; cached)."""
    return _synthetic(tuple(settings.organization_names), synthetic_key(settings), settings.run.seed)
