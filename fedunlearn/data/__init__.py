"""Data for fedunlearn: synthetic multi-organization consortia, public text and users' own data.

* :mod:`~fedunlearn.data.records` — the immutable containers (``Record``, ``Canary``,
  ``OrganizationData``, ``CanarySpace``, ``Consortium``);
* :mod:`~fedunlearn.data.synthetic` — a seeded consortium generator with canaries;
* :mod:`~fedunlearn.data.public` — a seeded public corpus for tokenizers and pre-training;
* :mod:`~fedunlearn.data.io` — the on-disk format (save/load, sha256 manifest);
* :mod:`~fedunlearn.data.user` — one organization's own ``.txt``/``.jsonl`` files or HF dataset;
* :mod:`~fedunlearn.data.realtext`, :mod:`~fedunlearn.data.realorgs` — real text found on this machine;
* :mod:`~fedunlearn.data.generated` — the consortium a scenario without a data folder generates.
"""

from __future__ import annotations

from fedunlearn.data.io import load_consortium, load_organization, save_consortium
from fedunlearn.data.public import public_corpus
from fedunlearn.data.records import (
    Canary,
    CanarySpace,
    Consortium,
    OrganizationData,
    Record,
)
from fedunlearn.data.styles import STYLES
from fedunlearn.data.synthetic import default_organization_names, generate_consortium
from fedunlearn.data.user import load_user_organization

__all__ = [
    "STYLES",
    "Canary",
    "CanarySpace",
    "Consortium",
    "OrganizationData",
    "Record",
    "default_organization_names",
    "generate_consortium",
    "load_consortium",
    "load_organization",
    "load_user_organization",
    "public_corpus",
    "save_consortium",
]
