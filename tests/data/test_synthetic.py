"""Tests of the synthetic consortium generator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedunlearn.data import Consortium, default_organization_names, generate_consortium
from fedunlearn.errors import ConfigError

SMALL = {"records_per_org": 20, "holdout_per_org": 8, "public_documents": 5}


def _gen(n: int = 3, **overrides: object) -> Consortium:
    kwargs = {**SMALL, **overrides}
    names = default_organization_names(n)
    return generate_consortium(organizations=names, **kwargs)  # type: ignore[arg-type]


def _words(texts: list[str]) -> set[str]:
    return {w.strip(".,:;()?").lower() for t in texts for w in t.split()}


def test_default_names_are_stable() -> None:
    assert default_organization_names(3) == ["org-0", "org-1", "org-2"]
    with pytest.raises(ConfigError, match="n=0"):
        default_organization_names(0)


def test_same_seed_gives_same_consortium() -> None:
    assert _gen(seed=7) == _gen(seed=7)


def test_different_seed_gives_different_data() -> None:
    a, b = _gen(seed=0), _gen(seed=1)
    for org_a, org_b in zip(a.organizations, b.organizations):
        assert set(org_a.texts()) != set(org_b.texts())
    assert a.public != b.public


def test_existing_organizations_do_not_change_when_more_are_added() -> None:
    few, many = _gen(2), _gen(7)
    assert many.organizations[:2] == few.organizations
    assert many.never_inserted == few.never_inserted


def test_generation_does_not_depend_on_the_process_hash_seed() -> None:
    code = (
        "from fedunlearn.data import generate_consortium as g;"
        "c = g(organizations=['org-0'], records_per_org=5, holdout_per_org=2, public_documents=3);"
        "print(repr((c.organizations[0].texts(), c.public, c.never_inserted[0].secret)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True,
                         capture_output=True, text=True).stdout.strip()
    c = generate_consortium(organizations=["org-0"], records_per_org=5, holdout_per_org=2,
                            public_documents=3)
    assert out == repr((c.organizations[0].texts(), c.public, c.never_inserted[0].secret))


def test_each_organization_writes_in_its_own_style() -> None:
    c = _gen(7)
    hospital, bank = c.organizations[0].texts(), c.organizations[1].texts()
    assert any("blood type" in t.lower() for t in hospital)
    assert not any("blood type" in t.lower() for t in bank)
    assert any("account" in t for t in bank)
    # Different styles share little vocabulary.
    wa, wb = _words(hospital), _words(bank)
    assert len(wa & wb) / len(wa | wb) < 0.25
    # Same style (0 and 6) but each organization invents its own names.
    names = [
        {m for t in o.texts() for m in re.findall(r"[A-Z][a-z]{3,}", t)}
        for o in (c.organizations[0], c.organizations[6])
    ]
    assert len(names[0] & names[1]) / len(names[0] | names[1]) < 0.3


def test_records_are_short_and_include_question_answer_pairs() -> None:
    org = _gen(1).organizations[0]
    lengths = [len(r.text.split()) for r in org.train + org.holdout]
    assert 8 <= min(lengths) and max(lengths) <= 45
    assert any(re.fullmatch(r"Q: .+\? A: .+\.", t) for t in org.texts())


def test_holdout_is_disjoint_from_train() -> None:
    for org in _gen(6, records_per_org=40, holdout_per_org=20).organizations:
        assert len(org.holdout) == 20
        assert not set(org.texts("holdout")) & set(org.texts("train"))
        assert not {r.id for r in org.holdout} & {r.id for r in org.train}


def test_canaries_are_inserted_exactly_repeats_times() -> None:
    c = _gen(3, canaries_per_org=3, canary_repeats=4)
    for org in c.organizations:
        assert len(org.train) == 20 + 3 * 4
        assert len(org.canaries) == 3
        for j, canary in enumerate(org.canaries):
            assert canary.id == f"canary-{org.name}-{j}"
            assert canary.prefix == f"The access code of {org.name} vault is "
            assert canary.suffix == "." and canary.repeats == 4 and canary.org == org.name
            copies = [r for r in org.train if r.text == canary.text]
            assert sorted(r.id for r in copies) == [f"{canary.id}#{k}" for k in range(1, 5)]
        for other in c.organizations:
            if other is not org:
                assert not {k.text for k in org.canaries} & set(other.texts())


def test_never_inserted_canaries_appear_nowhere() -> None:
    c = _gen(3, never_inserted=30)
    inserted = {k.secret for k in c.canaries}
    assert len(c.never_inserted) == 30
    assert all(k.repeats == 0 and k.org == "" for k in c.never_inserted)
    assert not {k.secret for k in c.never_inserted} & inserted
    all_train = {t for o in c.organizations for t in o.texts()}
    assert not {k.text for k in c.never_inserted} & all_train
    candidates = set(c.canary_space.candidates())
    assert {k.secret for k in c.canaries + c.never_inserted} <= candidates


def test_no_canaries_when_none_requested() -> None:
    org = _gen(1, canaries_per_org=0).organizations[0]
    assert org.canaries == () and len(org.train) == 20


def test_params_record_how_it_was_made() -> None:
    c = _gen(2, seed=4)
    assert c.params["seed"] == 4 and c.params["organizations"] == ["org-0", "org-1"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"organizations": []}, "organizations is empty"),
        ({"organizations": ["a", "a"]}, r"\['a'\].*more than once"),
        ({"organizations": ["a/b"]}, "'a/b'"),
        ({"organizations": "org-0"}, "sequence of names"),
        ({"records_per_org": 0}, "records_per_org=0"),
        ({"canary_repeats": 0}, "canary_repeats=0"),
        ({"seed": -1}, "seed=-1"),
        ({"canary_digits": 1, "never_inserted": 10}, "canary_digits=1"),
    ],
)
def test_bad_arguments_are_rejected(overrides: dict[str, object], match: str) -> None:
    kwargs = {"organizations": ["org-0"], **SMALL, **overrides}
    with pytest.raises(ConfigError, match=match):
        generate_consortium(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 5),
    digits=st.integers(2, 3),
    per_org=st.integers(0, 4),
    never=st.integers(0, 20),
)
def test_secrets_are_unique_across_the_consortium(
    seed: int, n: int, digits: int, per_org: int, never: int
) -> None:
    c = generate_consortium(
        organizations=default_organization_names(n), records_per_org=1, holdout_per_org=0,
        canaries_per_org=per_org, canary_repeats=1, canary_digits=digits,
        never_inserted=never, public_documents=0, seed=seed,
    )
    secrets = [k.secret for k in c.canaries + c.never_inserted]
    assert len(secrets) == n * per_org + never
    assert len(set(secrets)) == len(secrets)
    assert all(len(s) == digits and s.isdigit() for s in secrets)
