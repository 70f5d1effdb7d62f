"""The real-text consortium: one organization per source, no overlap, canaries, missing sources."""

from __future__ import annotations

import pytest

import fedunlearn.data.realtext as realtext
from fedunlearn.data import load_consortium, save_consortium
from fedunlearn.data.realorgs import real_text_consortium, sentence_records
from fedunlearn.data.realtext import ORGANIZATION_SOURCES, SOURCES, TextSource
from fedunlearn.errors import ConfigError, DataError


def test_sentence_records_keep_whole_sentences():
    paragraph = ("First sentence has exactly seven words here. " * 3
                 + "A very long sentence " + "word " * 50 + "ends. Short tail sentence with six words.")
    records = sentence_records(paragraph, max_words=20)
    assert records[0] == "First sentence has exactly seven words here. First sentence has exactly seven words here."
    assert all(len(r.split()) <= 20 for r in records)
    assert "Short tail sentence with six words." in records
    assert not any("word word" in r for r in records)  # the 54-word sentence is dropped, never cut


@pytest.fixture(scope="module")
def consortium():
    return real_text_consortium(records_per_org=30, holdout_per_org=10, canaries_per_org=2, canary_repeats=3,
                                never_inserted=5, public_documents=10, seed=1)


def test_one_organization_per_present_source(consortium):
    present = [r["name"] for r in consortium.params["sources"] if r["documents"]]
    assert consortium.names == [s for s in ORGANIZATION_SOURCES if s in present and s not in consortium.params["skipped"]]
    assert len(consortium.names) >= 2
    for org in consortium.organizations:
        train = {r.text for r in org.train}
        holdout = {r.text for r in org.holdout}
        assert len(org.holdout) == 10 and len(org.train) == 30 + 2 * 3
        assert not train & holdout
        assert [c.org for c in org.canaries] == [org.name] * 2
        copies = [r for r in org.train if r.id.startswith(f"canary-{org.name}-0#")]
        assert len(copies) == 3 and copies[0].text == org.canaries[0].text
    secrets = [c.secret for c in consortium.canaries] + [c.secret for c in consortium.never_inserted]
    assert len(set(secrets)) == len(secrets)
    assert len(consortium.public) == 10


def test_organizations_differ_in_domain(consortium):
    # Each organization's records come from its own source: no record appears in two of them.
    seen: dict[str, str] = {}
    for org in consortium.organizations:
        for record in org.train + org.holdout:
            if not record.id.startswith("canary-"):
                assert seen.setdefault(record.text, org.name) == org.name


def test_deterministic_and_round_trips(consortium, tmp_path):
    again = real_text_consortium(records_per_org=30, holdout_per_org=10, canaries_per_org=2, canary_repeats=3,
                                 never_inserted=5, public_documents=10, seed=1)
    assert again.organizations == consortium.organizations
    save_consortium(consortium, tmp_path / "orgs")
    assert load_consortium(tmp_path / "orgs").organizations == consortium.organizations


def test_named_organizations_take_sources_in_order():
    c = real_text_consortium(organizations=["law-firm", "ops-team"], records_per_org=10, holdout_per_org=5,
                             canaries_per_org=1, public_documents=0)
    assert c.names == ["law-firm", "ops-team"]
    assert list(c.params["organization_sources"].values()) == list(ORGANIZATION_SOURCES[:2])
    assert c.organization("law-firm").canaries[0].prefix == "The access code of law-firm vault is "


def test_missing_source_is_skipped_with_a_reason(monkeypatch):
    monkeypatch.setitem(SOURCES, "perl-docs", TextSource("perl-docs", "Perl", "/nowhere", lambda: [],
                                                         realtext._pod_file_paragraphs))
    c = real_text_consortium(records_per_org=10, holdout_per_org=5, public_documents=0)
    assert "perl-docs" not in c.names
    assert "0 records found in /nowhere" in c.params["skipped"]["perl-docs"]
    with pytest.raises(DataError, match=r"perl-docs: 0 records found in /nowhere"):
        real_text_consortium(organizations=["a", "b", "c", "d"], records_per_org=10, holdout_per_org=5)
    with pytest.raises(DataError, match="lower records_per_org"):
        real_text_consortium(records_per_org=10**6, holdout_per_org=5)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="pre-training corpus"):
        real_text_consortium(sources=["python-help", "licenses"])
    with pytest.raises(ConfigError, match="records_per_org"):
        real_text_consortium(records_per_org=0)
