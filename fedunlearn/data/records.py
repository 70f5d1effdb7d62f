"""Immutable data containers: records, canaries, one organization's data and a consortium.

These dataclasses are the only currency between the data layer and the rest of fedunlearn:
generators (:mod:`fedunlearn.data.synthetic`, :mod:`fedunlearn.data.user`) build them, the on-disk
format (:mod:`fedunlearn.data.io`) saves and loads them, and training and evaluation read them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedunlearn.errors import ConfigError, UnknownNameError

__all__ = [
    "NAME_PATTERN",
    "SPLITS",
    "Canary",
    "CanarySpace",
    "Consortium",
    "OrganizationData",
    "Record",
]

#: Organization names double as folder names and appear in canary text.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: Names accepted by :meth:`OrganizationData.texts`.
SPLITS = ("holdout", "train")

#: Largest canary space allowed; :meth:`CanarySpace.candidates` materializes all of it.
_MAX_DIGITS = 7


@dataclass(frozen=True)
class Record:
    """One training or evaluation text.

    Attributes
    ----------
    id : str
        Identifier, unique within an organization (e.g. ``"org-0-train-17"`` or ``"notes.txt:3"``).
    text : str
        The text itself.
    """

    id: str
    text: str


@dataclass(frozen=True)
class Canary:
    """A secret-bearing sentence that measures memorization.

    Canaries and their exposure follow Carlini et al. (2019), "The Secret Sharer".

    Attributes
    ----------
    id : str
        Identifier, e.g. ``"canary-org-0-1"``; inserted copies in train use ``"<id>#<k>"``.
    org : str
        The organization whose training data holds it; ``""`` for never-inserted canaries.
    prefix : str
        Text before the secret, e.g. ``"The access code of org-0 vault is "``.
    secret : str
        The secret, a fixed-length digit string from a :class:`CanarySpace`.
    suffix : str
        Text after the secret, e.g. ``"."``.
    repeats : int
        How many times the canary was inserted into training data; 0 if never inserted.
    """

    id: str
    org: str
    prefix: str
    secret: str
    suffix: str
    repeats: int

    @property
    def text(self) -> str:
        """The full canary sentence: ``prefix + secret + suffix``."""
        return self.prefix + self.secret + self.suffix


@dataclass(frozen=True)
class OrganizationData:
    """Everything one organization holds locally; it never leaves the organization.

    Attributes
    ----------
    name : str
        Organization name, e.g. ``"org-0"``.
    train : tuple of Record
        Training records, including every inserted canary repeated ``repeats`` times (ids
        ``"<canary id>#<k>"``).
    holdout : tuple of Record
        Records from the same distribution that are never trained on (membership-inference
        baseline and utility measurements).
    canaries : tuple of Canary
        The canaries inserted into ``train``; may be empty (e.g. for users' own data).
    """

    name: str
    train: tuple[Record, ...]
    holdout: tuple[Record, ...]
    canaries: tuple[Canary, ...] = ()

    def texts(self, split: str = "train") -> list[str]:
        """Return the texts of one split, in order.

        Parameters
        ----------
        split : {"train", "holdout"}
            Which split to return.

        Returns
        -------
        list of str
            The texts of the split's records.

        Raises
        ------
        ConfigError
            If ``split`` is not ``"train"`` or ``"holdout"``.
        """
        if split == "train":
            return [r.text for r in self.train]
        if split == "holdout":
            return [r.text for r in self.holdout]
        raise ConfigError(
            f"split {split!r} is invalid for organization {self.name!r}; expected one of "
            f"{', '.join(repr(s) for s in SPLITS)}; pass split='train' or split='holdout'"
        )

    def fingerprint(self) -> str:
        """sha256 of the records (ids and texts, train then holdout): what a node presents when
        it identifies, and what the run's ledger and audit log keep of the data it trained on."""
        import hashlib

        h = hashlib.sha256()
        for split, records in (("train", self.train), ("holdout", self.holdout)):
            for r in records:
                h.update(f"{split}\x1f{r.id}\x1f{r.text}\x1e".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class CanarySpace:
    """The set of all possible canary secrets: every ``digits``-digit string.

    Attributes
    ----------
    digits : int
        Secret length; the space holds ``10 ** digits`` strings from ``"0" * digits`` upward.
    """

    digits: int

    def __post_init__(self) -> None:
        if (
            isinstance(self.digits, bool)
            or not isinstance(self.digits, int)
            or not 1 <= self.digits <= _MAX_DIGITS
        ):
            raise ConfigError(
                f"canary digits={self.digits!r} is invalid; expected an integer from 1 to "
                f"{_MAX_DIGITS}; use e.g. 4 (10**4 candidate secrets)"
            )

    @property
    def size(self) -> int:
        """Number of candidate secrets, ``10 ** digits``."""
        return 10**self.digits

    def format(self, index: int) -> str:
        """Return the secret at ``index`` (zero-padded to ``digits`` characters)."""
        return f"{index:0{self.digits}d}"

    def candidates(self) -> list[str]:
        """Return every candidate secret in increasing order.

        Returns
        -------
        list of str
            ``["0000", "0001", ..., "9999"]`` for ``digits=4``.
        """
        return [self.format(i) for i in range(self.size)]


@dataclass(frozen=True)
class Consortium:
    """The data of a whole federation: every organization plus public data and canary baselines.

    Attributes
    ----------
    organizations : tuple of OrganizationData
        One entry per organization, names unique.
    public : tuple of str
        Public documents (tokenizer training, base-model pre-training).
    canary_space : CanarySpace
        The space all secrets (inserted and never-inserted) are drawn from.
    never_inserted : tuple of Canary
        Canaries with the same template whose secrets appear nowhere in training data; their
        scores give the reference distribution for exposure.
    params : Mapping[str, object], optional
        How the consortium was made (generator name, seed, sizes), JSON values only; written to
        ``manifest.json`` by :func:`~fedunlearn.data.io.save_consortium`. Empty if unknown.
    """

    organizations: tuple[OrganizationData, ...]
    public: tuple[str, ...]
    canary_space: CanarySpace
    never_inserted: tuple[Canary, ...]
    params: Mapping[str, object] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        names = [o.name for o in self.organizations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(
                f"organization names {duplicates!r} appear more than once; every organization "
                "needs a unique name; rename or drop the duplicates"
            )

    @property
    def names(self) -> list[str]:
        """Organization names, in order."""
        return [o.name for o in self.organizations]

    @property
    def canaries(self) -> tuple[Canary, ...]:
        """Every inserted canary of every organization, in organization order."""
        return tuple(c for o in self.organizations for c in o.canaries)

    def organization(self, name: str) -> OrganizationData:
        """Return the organization called ``name``.

        Raises
        ------
        UnknownNameError
            If no organization has that name; the message lists the valid names.
        """
        for org in self.organizations:
            if org.name == name:
                return org
        raise UnknownNameError("organization", name, self.names)
