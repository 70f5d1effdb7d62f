"""A consortium of organizations whose data is real English text found on this machine.

Each organization holds the text of one :mod:`~fedunlearn.data.realtext` source, so each has its
own domain (legal text, command manuals, a software catalogue, Perl documentation), and none of it
is in the embedded default model's pre-training corpus. Records are one to a few sentences (up to
:data:`MAX_RECORD_WORDS` words); canaries follow the synthetic consortium's template ("The access
code of <org> vault is NNNN.") so that exposure means the same thing on both.

:func:`real_text_consortium` returns an ordinary :class:`~fedunlearn.data.Consortium`; save it with
:func:`~fedunlearn.data.save_consortium` and point ``data.dir`` at the folder
(``fedunlearn data real-text --out DIR`` does both steps and writes a scenario file).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from fedunlearn.data.realtext import ORGANIZATION_SOURCES, PRETRAIN_SOURCES, SOURCES, gather
from fedunlearn.data.records import Canary, CanarySpace, Consortium, OrganizationData, Record
from fedunlearn.data.synthetic import CANARY_PREFIX, CANARY_SUFFIX, draw_secret
from fedunlearn.errors import ConfigError, DataError

__all__ = ["DEMO_SCHEDULE", "MAX_RECORD_WORDS", "real_text_consortium", "sentence_records"]

#: A record holds whole sentences up to this many words (about 64 tokens of the default model).
MAX_RECORD_WORDS = 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
#: The demo's schedule on real text (``fedunlearn demo``, ``fedunlearn data real-text`` scenarios):
#: 400 training records per organization with one canary inserted 10 times, LoRA on attention and
#: MLP projections, 8 FedAvg rounds of 2 local epochs at lr 0.005. Measured on 2 CPU cores with the
#: small model, 4 organizations, seeds 0/1/2: mean canary exposure 9.7/11.1/12.3 bits (never-inserted
#: p95 3.1-4.2), every organization's holdout loss 0.13-0.76 nats lower than the base model's.
#: The former 120 records x 3 canaries x 4 copies, 8 rounds of 3 epochs at lr 0.01 overfitted: the
#: holdout loss of 2-3 of 4 organizations rose and mean exposure was 5.7-6.6 bits; lr 0.02 gave
#: 4.9 bits, 16 copies of one canary 7.5.
DEMO_SCHEDULE: dict[str, object] = {
    "rounds": 8, "epochs": 2, "lr": 0.005, "shards": 1, "records": 400, "canaries": 1, "repeats": 10,
    "target_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
}
#: Files read per source at most, spread over its sorted file list (manual pages number thousands).
_MAX_FILES = 400


def sentence_records(paragraph: str, max_words: int = MAX_RECORD_WORDS) -> list[str]:
    """Cut a paragraph into records of whole sentences, each at most `max_words` words.

    A single sentence longer than `max_words` is dropped (it would be cut mid-sentence).
    """
    records: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        words = len(sentence.split())
        if words > max_words:
            if current:
                records.append(" ".join(current))
            current = []
            continue
        if current and len(" ".join(current).split()) + words > max_words:
            records.append(" ".join(current))
            current = []
        current.append(sentence)
    if current:
        records.append(" ".join(current))
    return [r for r in records if len(r.split()) >= 6]


def _check(label: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{label} is {value!r}; expected an int >= {minimum}")
    return value


def real_text_consortium(
    *,
    organizations: Sequence[str] | None = None,
    sources: Sequence[str] = ORGANIZATION_SOURCES,
    records_per_org: int = 120,
    holdout_per_org: int = 40,
    canaries_per_org: int = 3,
    canary_repeats: int = 4,
    canary_digits: int = 4,
    never_inserted: int = 50,
    public_documents: int = 200,
    seed: int = 0,
    min_organizations: int = 2,
) -> Consortium:
    """Build a consortium with one organization per real-text source.

    Parameters
    ----------
    organizations : sequence of str, optional
        Organization names, given the sources that have enough text in order (the first name the
        first such source, ...). Default: the source names themselves.
    sources : sequence of str
        :data:`~fedunlearn.data.realtext.SOURCES` names, one per organization. Defaults to :data:`~fedunlearn.data.realtext.ORGANIZATION_SOURCES`, none of which is
        in the default model's pre-training corpus.
    records_per_org, holdout_per_org : int
        Training and holdout records per organization, drawn without overlap from the source's
        records in a seeded order.
    canaries_per_org, canary_repeats, canary_digits, never_inserted : int
        As in :func:`~fedunlearn.data.generate_consortium`.
    public_documents : int
        Public documents: paragraphs of the pre-training corpus (text the base model saw, used by
        the evaluation as "public" reference text).
    seed : int
        Seeds record selection, shuffling and secrets.
    min_organizations : int
        Fewest sources that must give enough text; sources with too little are skipped with a
        note in ``params["skipped"]``.

    Returns
    -------
    Consortium
        ``params`` records the generator, the sources used and skipped, and each source's manifest.

    Raises
    ------
    DataError
        If fewer than `min_organizations` sources have ``records_per_org + holdout_per_org``
        records on this machine (the message names each source, where it was looked for and how
        many records it gave).
    """
    for label, value, minimum in (("records_per_org", records_per_org, 1), ("holdout_per_org", holdout_per_org, 0),
                                  ("canaries_per_org", canaries_per_org, 0), ("canary_repeats", canary_repeats, 1),
                                  ("never_inserted", never_inserted, 0), ("public_documents", public_documents, 0),
                                  ("seed", seed, 0), ("min_organizations", min_organizations, 1)):
        _check(label, value, minimum)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ConfigError(f"unknown text sources {unknown}; valid ones are {sorted(SOURCES)}")
    clash = sorted(set(sources) & set(PRETRAIN_SOURCES))
    if clash:
        raise ConfigError(
            f"sources {clash} are in the default model's pre-training corpus; organizations need text "
            f"the model never saw: choose from {list(ORGANIZATION_SOURCES)}"
        )
    need = records_per_org + holdout_per_org
    gathered = gather(sources, max_files=_MAX_FILES)
    rng = random.Random(f"fedunlearn-real-text/{seed}")
    pools: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for report in gathered.reports:
        records = sorted({r for p in gathered.by_source(report.name) for r in sentence_records(p)})
        if len(records) < need:
            skipped[report.name] = (f"{len(records)} records found in {report.where} "
                                    f"({report.files_found} files), {need} needed")
            continue
        rng.shuffle(records)
        pools[report.name] = records[:need]
    if organizations is not None:
        names = [str(n) for n in organizations]
        if len(set(names)) != len(names) or not names:
            raise ConfigError(f"organization names {names} must be unique and at least one")
        if len(names) > len(pools):
            detail = "; ".join(f"{name}: {why}" for name, why in skipped.items()) or "none skipped"
            raise DataError(
                f"{len(names)} organizations need {len(names)} real-text sources, but this machine has "
                f"{len(pools)} with enough text ({', '.join(pools)}; {detail}): use at most {len(pools)} "
                "organizations, or synthetic data (data.text = \"synthetic\")"
            )
        min_organizations = min(min_organizations, len(names))
        pools = {name: pools[source] for name, source in zip(names, list(pools))}
        assigned = dict(zip(names, [r.name for r in gathered.reports if r.name not in skipped]))
    else:
        assigned = {name: name for name in pools}
    if len(pools) < min_organizations:
        detail = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise DataError(
            f"only {len(pools)} of the text sources {list(sources)} have enough text on this machine "
            f"for an organization of {records_per_org} + {holdout_per_org} records ({detail}); "
            "lower records_per_org/holdout_per_org, or install the missing documentation"
        )
    space = CanarySpace(canary_digits)
    if len(pools) * canaries_per_org + never_inserted > space.size // 2:
        raise ConfigError(
            f"canary_digits={canary_digits} gives {space.size} secrets, too few for "
            f"{len(pools) * canaries_per_org + never_inserted} distinct ones; raise canary_digits"
        )
    taken: set[str] = set()
    never_rng = random.Random(f"fedunlearn-never-inserted/{seed}/{canary_digits}")
    baseline = tuple(
        Canary(f"canary-never-{i}", "", CANARY_PREFIX.format(holder=f"reserve-{i}"),
               draw_secret(never_rng, space, taken), CANARY_SUFFIX, 0)
        for i in range(never_inserted)
    )
    organizations = []
    for name, records in pools.items():
        secret_rng = random.Random(f"fedunlearn-canary/{seed}/{name}")
        train = [Record(f"{name}-train-{i}", t) for i, t in enumerate(records[:records_per_org])]
        canaries = []
        for j in range(canaries_per_org):
            canary = Canary(f"canary-{name}-{j}", name, CANARY_PREFIX.format(holder=name),
                            draw_secret(secret_rng, space, taken), CANARY_SUFFIX, canary_repeats)
            canaries.append(canary)
            train.extend(Record(f"{canary.id}#{k}", canary.text) for k in range(1, canary_repeats + 1))
        random.Random(f"fedunlearn-real-text-order/{seed}/{name}").shuffle(train)
        holdout = tuple(Record(f"{name}-holdout-{i}", t) for i, t in enumerate(records[records_per_org:]))
        organizations.append(OrganizationData(name, tuple(train), holdout, tuple(canaries)))
    public: tuple[str, ...] = ()
    if public_documents:
        public = gather(PRETRAIN_SOURCES, max_documents=public_documents).documents[:public_documents]
    params: dict[str, object] = {
        "generator": "fedunlearn.data.realorgs",
        "seed": seed,
        "organizations": list(pools),
        "organization_sources": assigned,
        "records_per_org": records_per_org,
        "holdout_per_org": holdout_per_org,
        "canaries_per_org": canaries_per_org,
        "canary_repeats": canary_repeats,
        "canary_digits": canary_digits,
        "never_inserted": never_inserted,
        "public_documents": len(public),
        "skipped": skipped,
        "sources": [r.as_dict() for r in gathered.reports],
    }
    return Consortium(tuple(organizations), public, space, baseline, params)
