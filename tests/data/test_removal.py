"""Removing an erased organization's records from a saved consortium, and regenerating them for the
judge only when they hash to the fingerprint the run logged (fedunlearn.data.removal)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fedunlearn.data import Consortium, generate_consortium, load_consortium, save_consortium
from fedunlearn.data.removal import remove_organization, restore_organizations
from fedunlearn.errors import DataError


def _consortium(seed: int = 3) -> Consortium:
    return generate_consortium(organizations=["org-0", "org-1", "org-2"], records_per_org=12, holdout_per_org=4,
                               canaries_per_org=1, canary_repeats=2, never_inserted=5, public_documents=6, seed=seed)


def test_removing_an_organization_deletes_its_records_and_canaries_and_keeps_the_rest_checked(tmp_path: Path):
    full = _consortium()
    folder = tmp_path / "data"
    save_consortium(full, folder)
    assert remove_organization(folder, "org-1") == 3  # train, holdout, canaries
    assert not (folder / "org-1").exists()
    text = "".join(p.read_text() for p in folder.rglob("*") if p.is_file())
    assert all(r.text not in text for r in full.organization("org-1").train)  # not a record left anywhere
    assert all(c.secret not in text for c in full.organization("org-1").canaries)
    assert "org-1" not in json.loads((folder / "manifest.json").read_text())["organizations"]
    left = load_consortium(folder)  # every remaining file hash-checked as before
    assert left.names == ["org-0", "org-2"] and left.organization("org-2") == full.organization("org-2")
    assert left.canaries == tuple(k for n in ("org-0", "org-2") for k in full.organization(n).canaries)
    assert remove_organization(folder, "org-1") == 0  # idempotent: a rerun after a kill finds nothing
    assert load_consortium(folder) == left


def test_a_kill_after_the_files_went_is_completed_by_a_second_call(tmp_path: Path):
    folder = tmp_path / "data"
    save_consortium(_consortium(), folder)
    for p in (folder / "org-1").iterdir():  # the files are gone, canaries.json and the manifest not yet rewritten
        p.unlink()
    (folder / "org-1").rmdir()
    with pytest.raises(DataError):
        load_consortium(folder)
    remove_organization(folder, "org-1")
    assert load_consortium(folder).names == ["org-0", "org-2"]


def test_the_judge_gets_the_regenerated_records_only_if_they_are_the_ones_trained_on(tmp_path: Path):
    full = _consortium()
    folder = tmp_path / "data"
    save_consortium(full, folder)
    remove_organization(folder, "org-1")
    prints = {o.name: o.fingerprint() for o in full.organizations}
    back = restore_organizations(load_consortium(folder), full.names, lambda: _consortium(), prints)
    assert back.names == full.names and back.organization("org-1") == full.organization("org-1")
    assert back.canaries == full.canaries
    with pytest.raises(DataError, match="not the data it trained on"):  # another seed: other records
        restore_organizations(load_consortium(folder), full.names, lambda: _consortium(seed=4), prints)
    with pytest.raises(DataError, match="not the data it trained on"):  # no logged fingerprint: nothing to trust
        restore_organizations(load_consortium(folder), full.names, lambda: full, {**prints, "org-1": ""})

    def gone():
        raise DataError("the real-text source /usr/share/doc is not on this machine")

    with pytest.raises(DataError, match=r"cannot regenerate the data of org-1 .*removed from the run folder.*"
                                        r"/usr/share/doc"):
        restore_organizations(load_consortium(folder), full.names, gone, prints)


def test_the_fingerprint_covers_ids_texts_and_splits():
    org = _consortium().organization("org-0")
    assert org.fingerprint() == _consortium().organization("org-0").fingerprint()
    moved = replace(org, train=org.train[:-1], holdout=org.holdout + org.train[-1:])
    renamed = replace(org, train=(replace(org.train[0], id="other"),) + org.train[1:])
    assert len({org.fingerprint(), moved.fingerprint(), renamed.fingerprint()}) == 3
