"""Real text found on the machine: cleaning rules, gathering with a manifest, missing sources."""

from __future__ import annotations

import hashlib

import pytest

import fedunlearn.data.realtext as realtext
from fedunlearn.data.realtext import ORGANIZATION_SOURCES, PRETRAIN_SOURCES, SOURCES, TextSource, gather
from fedunlearn.data.textclean import is_prose, pod_paragraphs, prose_paragraphs, roff_paragraphs
from fedunlearn.errors import ConfigError, DataError, UnknownNameError


def test_prose_rules_keep_sentences_and_drop_code():
    text = (
        "Return the number of items in a container. The argument may be a sequence or a collection.\n\n"
        ">>> len([1, 2, 3])\n3\n\n"
        "    for x in range(10):\n        print(x)\n\n"
        "x = {'a': 1, 'b': [2, 3]}; y = x['a'] + 1 # comment here and more words\n\n"
        "Too short.\n\n"
        "See https://example.org/docs for the documentation of this module and more words here."
    )
    assert prose_paragraphs(text) == [
        "Return the number of items in a container. The argument may be a sequence or a collection."
    ]
    assert not is_prose("lowercase start is not a sentence of prose in any of these documents at all.")
    assert is_prose("The :func:`open` role is removed before this check runs on the text here.") is False
    assert prose_paragraphs("The ``open`` function and the :func:`close` function are both described here.") == [
        "The open function and the close function are both described here."
    ]


def test_roff_and_pod_markup_is_removed():
    roff = (
        '.\\" comment\n.TH LS 1\n.SH NAME\nls \\- list directory contents\n.SH DESCRIPTION\n.PP\n'
        "List information about the FILEs (the current directory by default). Sort entries\n"
        "alphabetically if none of \\fB\\-cftuvSUX\\fR nor \\fB\\-\\-sort\\fP is specified.\n"
        ".TP\n\\fB\\-a\\fR\n"
    )
    assert roff_paragraphs(roff) == [
        "List information about the FILEs (the current directory by default). Sort entries alphabetically "
        "if none of -cftuvSUX nor --sort is specified."
    ]
    pod = (
        "=head1 NAME\n\nperlfaq - questions\n\n"
        "This document answers B<frequently> asked questions about L<Perl|perl> and its C<modules> here.\n\n"
        "    my $x = 1;\n"
    )
    assert pod_paragraphs(pod) == [
        "This document answers frequently asked questions about Perl and its modules here."
    ]


def test_gather_pretraining_sources_with_manifest():
    gathered = gather(PRETRAIN_SOURCES, max_documents=40)
    assert len(gathered.documents) == len(gathered.sources)
    manifest = gathered.manifest()
    assert manifest["documents"] == len(gathered.documents)
    assert manifest["sha256"] == hashlib.sha256("\n\n".join(gathered.documents).encode()).hexdigest()
    for report in gathered.reports:  # each source: at most 40 documents, a hash of exactly those
        mine = gathered.by_source(report.name)
        assert report.documents == len(mine) <= 40
        if mine:
            assert report.sha256 == hashlib.sha256("\n\n".join(mine).encode()).hexdigest()
    assert gathered.by_source("python-help"), "the Python help pages exist wherever Python does"
    keys = [" ".join(d.lower().split()) for d in gathered.documents]
    assert len(set(keys)) == len(keys)  # deduplicated
    # A smaller limit gives a prefix of a larger one (files are read in sorted order).
    assert gather(["python-help"], max_documents=10).documents == tuple(gathered.by_source("python-help")[:10])


def test_pretraining_and_organization_sources_are_disjoint():
    assert not set(PRETRAIN_SOURCES) & set(ORGANIZATION_SOURCES)
    assert set(PRETRAIN_SOURCES) | set(ORGANIZATION_SOURCES) == set(SOURCES)


def test_missing_and_unreadable_sources_are_reported(monkeypatch, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8 \xff")
    good = tmp_path / "good.txt"
    good.write_text("This is a plain sentence of prose that is long enough to be kept here.\n")
    monkeypatch.setitem(SOURCES, "licenses", TextSource("licenses", "legal", str(tmp_path),
                                                        lambda: [str(bad), str(good), str(tmp_path / "gone")],
                                                        realtext._text_paragraphs))
    monkeypatch.setitem(SOURCES, "manuals", TextSource("manuals", "manuals", "/nowhere", lambda: [],
                                                       realtext._man_paragraphs))
    gathered = gather(["licenses", "manuals"])
    licenses, manuals = gathered.reports
    assert (licenses.files_found, licenses.files_read, licenses.files_unreadable) == (3, 1, 2)
    assert any("bad.txt: UnicodeDecodeError" in e for e in licenses.unreadable_examples)
    assert any("gone: FileNotFoundError" in e for e in licenses.unreadable_examples)
    assert manuals.missing and manuals.files_found == 0
    with pytest.raises(DataError, match=r"manuals: 0 files in /nowhere"):
        gather(["manuals"])


def test_bad_arguments():
    with pytest.raises(UnknownNameError, match="'licenses'"):
        gather(["wikipedia"])
    with pytest.raises(ConfigError, match="max_documents"):
        gather(["python-help"], max_documents=0)
