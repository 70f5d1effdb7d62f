"""Synthetic multi-organization consortia with canaries, for measuring memorization and erasure.

Each organization writes short private records in its own style (hospital notes, bank client
profiles, lab logs, law-firm case summaries, shipment logs, student records; organization ``i``
uses style ``i mod 6``) with its own invented vocabulary, so organizations are distinguishable.
Every entity gives a profile record and a question/answer record ("Q: What is the blood type of
Mara Quell? A: O negative."). Holdout records come from the same generator with distinct
entities and are never trained on.

Canaries follow Carlini et al. (2019), "The Secret Sharer": ``"The access code of <org> vault is
<secret>."`` with a ``digits``-digit secret drawn uniformly from a :class:`CanarySpace`, inserted
``repeats`` times into the organization's training records. Never-inserted canaries use the same
template with vault holders that are not organizations and secrets disjoint from every inserted
one; they give the reference distribution for exposure.

Determinism: everything is a function of ``seed``. Organization ``name`` at position ``i`` is
generated from its own generator seeded by ``(seed, name)``, so appending organizations leaves the
existing ones unchanged. Secrets are kept unique across the consortium: never-inserted secrets are
drawn first (independent of the organizations); each organization then redraws any secret already
taken by the never-inserted canaries or by an earlier organization.

Audit canaries (``audit_canaries_per_org``, default 0 = none, so existing data is unchanged) serve
the one-run privacy audit of Steinke, Nasr and Jagielski (2023), see
:mod:`~fedunlearn.evaluate.privacy`. Each organization gets ``m`` audit records
``"Audit record <j> of <org> reads <secret>."`` (a 10-digit secret from their own stream). Each is
*included* — one copy appended to the organization's training records, id ``audit-<org>-<j>#1`` —
iff the low bit of ``HMAC-SHA256(key="fedunlearn-audit-coin/<seed>", msg=<canary id>)`` is 1:
independent Bernoulli(½) coins, recomputable from the data seed by :func:`audit_canaries`, so the
auditor knows the included set without any extra state. Excluded audit canaries are in no one's
training data. Keying the coins by the data seed is safe for the audit: the theorem needs the coins
independent of the training run's own randomness (client sampling, DP noise), and the training run
only ever sees the resulting records; the texts come from a stream separate from the coins, so a
text reveals nothing about its coin. The audited unit is one record, so the bound audits
record-level guarantees (DP-SGD). Organizations' own data gets no audit records: it never leaves
its node, which holds no run secret. The organization-level audit, whose coins the run secret
keys, is :mod:`fedunlearn.training.canaries` (``dp.audit-canary-orgs``).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Sequence
from dataclasses import dataclass

from fedunlearn.data.public import public_corpus
from fedunlearn.data.records import (
    NAME_PATTERN,
    Canary,
    CanarySpace,
    Consortium,
    OrganizationData,
    Record,
)
from fedunlearn.data.styles import (
    STYLES,
    OrgVocabulary,
    build_vocabulary,
    new_key,
    render_entity,
)
from fedunlearn.errors import ConfigError

__all__ = [
    "AUDIT_SECRET_DIGITS",
    "AuditCanary",
    "CANARY_PREFIX",
    "CANARY_SUFFIX",
    "audit_canaries",
    "consortium_audit_canaries",
    "default_organization_names",
    "draw_secret",
    "generate_consortium",
]

#: Canary template; ``{holder}`` is the organization name (or a reserve vault name).
CANARY_PREFIX = "The access code of {holder} vault is "
CANARY_SUFFIX = "."

#: Digits of an audit canary's secret: 10^10 values make two audit texts collide with negligible odds.
AUDIT_SECRET_DIGITS = 10


@dataclass(frozen=True)
class AuditCanary:
    """One audit canary of the one-run privacy audit.

    Attributes
    ----------
    id : str
        ``audit-<org>-<j>``; its training copy (when included) is the record ``<id>#1``.
    org : str
    text : str
    included : bool
        The keyed coin: whether the record is in ``org``'s training data.
    """

    id: str
    org: str
    text: str
    included: bool


def _audit_coin(seed: int, canary_id: str) -> bool:
    digest = hmac.new(f"fedunlearn-audit-coin/{seed}".encode(), canary_id.encode(), hashlib.sha256).digest()
    return bool(digest[-1] & 1)


def audit_canaries(org: str, *, count: int, seed: int) -> tuple[AuditCanary, ...]:
    """The ``count`` audit canaries of organization ``org`` under data seed ``seed``, with their coins.

    Deterministic: the generator inserts exactly the included ones and an auditor recomputes the
    same list. See the module docstring for why the coins are keyed by the seed.

    Raises
    ------
    ConfigError
        If ``count`` or ``seed`` is not a non-negative integer.
    """
    _check_int("audit_canaries_per_org", count, minimum=0, hint="use e.g. 64, or 0 for none")
    _check_int("seed", seed, minimum=0, hint="use the consortium's seed")
    rng = random.Random(f"fedunlearn-audit-text/{seed}/{org}")
    out = []
    for j in range(count):
        cid = f"audit-{org}-{j}"
        secret = "".join(rng.choice("0123456789") for _ in range(AUDIT_SECRET_DIGITS))
        out.append(AuditCanary(id=cid, org=org, text=f"Audit record {j} of {org} reads {secret}.",
                               included=_audit_coin(seed, cid)))
    return tuple(out)


def consortium_audit_canaries(consortium: Consortium, org: str) -> tuple[AuditCanary, ...]:
    """The audit canaries of ``org`` in a consortium made by :func:`generate_consortium` (empty if none)."""
    count = int(consortium.params.get("audit_canaries_per_org", 0) or 0)
    if not count or consortium.params.get("generator") != "fedunlearn.data.synthetic":
        return ()
    return audit_canaries(org, count=count, seed=int(consortium.params["seed"]))  # type: ignore[arg-type]


# Draw this many keys before falling back to a numbered key (huge organizations only).
_KEY_TRIES = 50


def default_organization_names(n: int) -> list[str]:
    """Return ``n`` stable organization names, ``["org-0", "org-1", ...]``.

    Raises
    ------
    ConfigError
        If ``n`` is not a positive integer.
    """
    _check_int("n", n, minimum=1, hint="pass the number of organizations, e.g. 4")
    return [f"org-{i}" for i in range(n)]


def _check_int(label: str, value: object, *, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{label}={value!r} is invalid; expected an integer >= {minimum}; {hint}")


def _check_names(organizations: Sequence[str]) -> list[str]:
    if isinstance(organizations, str) or not isinstance(organizations, Sequence):
        raise ConfigError(
            f"organizations={organizations!r} is invalid; expected a sequence of names; "
            "pass e.g. organizations=['org-0', 'org-1'] or default_organization_names(4)"
        )
    names = list(organizations)
    if not names:
        raise ConfigError(
            "organizations is empty; expected at least one organization name; "
            "pass e.g. default_organization_names(4)"
        )
    for name in names:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"organization name {name!r} is invalid; expected 1-64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit (it becomes a folder name); rename it"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"organization names {duplicates!r} appear more than once; expected unique names; "
            "drop or rename the duplicates"
        )
    return names


def draw_secret(rng: random.Random, space: CanarySpace, taken: set[str]) -> str:
    # Rejection sampling keeps the draw uniform over the untaken secrets and prefix-stable.
    while True:
        secret = space.format(rng.randrange(space.size))
        if secret not in taken:
            taken.add(secret)
            return secret


def _entity_texts(
    rng: random.Random, vocabulary: OrgVocabulary, count: int, used_keys: set[str]
) -> list[str]:
    texts: list[str] = []
    while len(texts) < count:
        key = ""
        for _ in range(_KEY_TRIES):
            key = new_key(vocabulary, rng)
            if key not in used_keys:
                break
        if key in used_keys:
            key = f"{key}-{len(used_keys)}"
        used_keys.add(key)
        texts.extend(render_entity(vocabulary, key, rng))
    return texts[:count]


def _organization(
    name: str,
    index: int,
    *,
    seed: int,
    records: int,
    holdout: int,
    canaries: int,
    repeats: int,
    space: CanarySpace,
    taken: set[str],
    audit: int = 0,
) -> OrganizationData:
    rng = random.Random(f"fedunlearn-org/{seed}/{name}")
    vocabulary = build_vocabulary(STYLES[index % len(STYLES)], rng)
    used_keys: set[str] = set()
    train_texts = _entity_texts(rng, vocabulary, records, used_keys)
    holdout_texts = _entity_texts(rng, vocabulary, holdout, used_keys)
    train = [Record(f"{name}-train-{i}", t) for i, t in enumerate(train_texts)]
    # Secrets come from a separate stream so record content does not depend on collisions.
    secret_rng = random.Random(f"fedunlearn-canary/{seed}/{name}")
    inserted: list[Canary] = []
    for j in range(canaries):
        canary = Canary(
            id=f"canary-{name}-{j}",
            org=name,
            prefix=CANARY_PREFIX.format(holder=name),
            secret=draw_secret(secret_rng, space, taken),
            suffix=CANARY_SUFFIX,
            repeats=repeats,
        )
        inserted.append(canary)
        train.extend(Record(f"{canary.id}#{k}", canary.text) for k in range(1, repeats + 1))
    train.extend(Record(f"{a.id}#1", a.text) for a in audit_canaries(name, count=audit, seed=seed) if a.included)
    rng.shuffle(train)
    holdout_records = tuple(Record(f"{name}-holdout-{i}", t) for i, t in enumerate(holdout_texts))
    return OrganizationData(name, tuple(train), holdout_records, tuple(inserted))


def generate_consortium(
    *,
    organizations: Sequence[str],
    records_per_org: int = 120,
    holdout_per_org: int = 40,
    canaries_per_org: int = 3,
    canary_repeats: int = 4,
    canary_digits: int = 4,
    never_inserted: int = 50,
    public_documents: int = 400,
    seed: int = 0,
    audit_canaries_per_org: int = 0,
) -> Consortium:
    """Generate a deterministic synthetic consortium.

    Parameters
    ----------
    organizations : Sequence[str]
        Unique organization names (letters, digits, ``.``, ``_``, ``-``); the one at position ``i``
        uses style ``i mod 6`` (hospital, bank, lab, law, logistics, school).
    records_per_org : int, optional
        Private records per organization, canaries not counted. Each organization's ``train`` has
        ``records_per_org + canaries_per_org * canary_repeats`` records, shuffled.
    holdout_per_org : int, optional
        Holdout records per organization (same distribution, distinct entities).
    canaries_per_org : int, optional
        Canaries inserted per organization (0 for none).
    canary_repeats : int, optional
        How many copies of each canary go into training (at least 1).
    canary_digits : int, optional
        Secret length; candidate space is ``10 ** canary_digits``.
    never_inserted : int, optional
        Number of never-inserted canaries (exposure baseline).
    public_documents : int, optional
        Number of public documents, see :func:`~fedunlearn.data.public.public_corpus`.
    seed : int, optional
        Master seed.
    audit_canaries_per_org : int, optional
        Audit canaries per organization for the one-run privacy audit (0, the default, for none;
        about half are included, one copy each, see :func:`audit_canaries`).

    Returns
    -------
    Consortium
        The organizations' data, public documents, the canary space and never-inserted canaries.

    Raises
    ------
    ConfigError
        If a name or count is invalid, or the canary space is too small for all secrets.
    """
    names = _check_names(organizations)
    _check_int("records_per_org", records_per_org, minimum=1, hint="use e.g. 120")
    _check_int("holdout_per_org", holdout_per_org, minimum=0, hint="use e.g. 40")
    _check_int("canaries_per_org", canaries_per_org, minimum=0, hint="use e.g. 3, or 0 for none")
    _check_int("canary_repeats", canary_repeats, minimum=1,
               hint="use e.g. 4; set canaries_per_org=0 to insert no canaries")
    _check_int("never_inserted", never_inserted, minimum=0, hint="use e.g. 50")
    _check_int("public_documents", public_documents, minimum=0, hint="use e.g. 400")
    _check_int("seed", seed, minimum=0, hint="use a non-negative integer seed")
    _check_int("audit_canaries_per_org", audit_canaries_per_org, minimum=0, hint="use e.g. 64, or 0 for none")
    space = CanarySpace(canary_digits)
    needed = len(names) * canaries_per_org + never_inserted
    if needed > space.size // 2:
        raise ConfigError(
            f"canary_digits={canary_digits} gives {space.size} candidate secrets but {needed} "
            f"unique secrets are needed ({len(names)} organizations x {canaries_per_org} + "
            f"{never_inserted} never-inserted); expected at most half the space; "
            "raise canary_digits or lower canaries_per_org / never_inserted"
        )
    taken: set[str] = set()
    baseline_rng = random.Random(f"fedunlearn-never-inserted/{seed}/{canary_digits}")
    baseline = tuple(
        Canary(
            id=f"canary-never-{i}",
            org="",
            prefix=CANARY_PREFIX.format(holder=f"reserve-{i}"),
            secret=draw_secret(baseline_rng, space, taken),
            suffix=CANARY_SUFFIX,
            repeats=0,
        )
        for i in range(never_inserted)
    )
    orgs = tuple(
        _organization(
            name,
            index,
            seed=seed,
            records=records_per_org,
            holdout=holdout_per_org,
            canaries=canaries_per_org,
            repeats=canary_repeats,
            space=space,
            taken=taken,
            audit=audit_canaries_per_org,
        )
        for index, name in enumerate(names)
    )
    params: dict[str, object] = {
        "generator": "fedunlearn.data.synthetic",
        "seed": seed,
        "organizations": names,
        "records_per_org": records_per_org,
        "holdout_per_org": holdout_per_org,
        "canaries_per_org": canaries_per_org,
        "canary_repeats": canary_repeats,
        "canary_digits": canary_digits,
        "never_inserted": never_inserted,
        "public_documents": public_documents,
    }
    if audit_canaries_per_org:  # only when asked: the params of existing consortia stay as they were
        params["audit_canaries_per_org"] = audit_canaries_per_org
    public = tuple(public_corpus(public_documents, seed))
    return Consortium(orgs, public, space, baseline, params)
