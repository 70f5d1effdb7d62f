"""Audit canaries of the synthetic consortium: keyed Bernoulli(½) coins, inserted only when included."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from fedunlearn.data import default_organization_names, generate_consortium
from fedunlearn.data.synthetic import audit_canaries, consortium_audit_canaries
from fedunlearn.errors import ConfigError

SMALL = {"records_per_org": 20, "holdout_per_org": 8, "public_documents": 5, "canaries_per_org": 1}


def _gen(audit: int, seed: int = 0):
    return generate_consortium(organizations=default_organization_names(3), seed=seed,
                               audit_canaries_per_org=audit, **SMALL)  # type: ignore[arg-type]


def test_coins_are_reproducible_and_fair() -> None:
    first = audit_canaries("org-0", count=2000, seed=5)
    assert first == audit_canaries("org-0", count=2000, seed=5)
    coins = [a.included for a in first]
    assert binomtest(sum(coins), len(coins), 0.5).pvalue > 1e-3  # ~Bernoulli(1/2)
    # neighbouring canaries' coins are not correlated (pairs agree about half the time)
    agree = sum(a == b for a, b in zip(coins, coins[1:]))
    assert binomtest(agree, len(coins) - 1, 0.5).pvalue > 1e-3
    other = [a.included for a in audit_canaries("org-0", count=2000, seed=6)]
    assert other != coins  # the key is the seed
    assert len({a.text for a in first}) == len(first)  # distinct texts


def test_only_included_canaries_are_trained_on_and_the_auditor_recomputes_them() -> None:
    consortium = _gen(audit=40)
    everything = [r.text for o in consortium.organizations for r in (*o.train, *o.holdout)] + list(consortium.public)
    for org in consortium.organizations:
        canaries = consortium_audit_canaries(consortium, org.name)
        assert canaries == audit_canaries(org.name, count=40, seed=0)
        included = [a for a in canaries if a.included]
        assert 0 < len(included) < 40
        for a in included:  # one copy, in its own organization's training records only
            assert [r.id for r in org.train if r.text == a.text] == [f"{a.id}#1"]
            assert everything.count(a.text) == 1
        for a in canaries:
            if not a.included:
                assert all(a.text not in t for t in everything), f"{a.id} was excluded but is in the data"
        assert len(org.train) == 20 + 4 + len(included)  # records + 1 canary x 4 repeats + included audits


def test_default_leaves_existing_data_unchanged() -> None:
    plain = generate_consortium(organizations=default_organization_names(3), seed=0, **SMALL)  # type: ignore[arg-type]
    assert _gen(audit=0) == plain
    assert "audit_canaries_per_org" not in plain.params
    assert consortium_audit_canaries(plain, "org-0") == ()
    with_audit = _gen(audit=8)
    assert with_audit.params["audit_canaries_per_org"] == 8
    # the rest of every organization's data is the same records (only shuffled with the audit ones)
    for a, b in zip(plain.organizations, with_audit.organizations):
        assert set(a.train) <= set(b.train) and a.holdout == b.holdout and a.canaries == b.canaries


def test_bad_count_is_explained() -> None:
    with pytest.raises(ConfigError, match="audit_canaries_per_org=-1.*0 for none"):
        _gen(audit=-1)
