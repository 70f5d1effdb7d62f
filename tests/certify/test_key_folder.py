"""Several runs may share one ``run.key-dir``: every key and secret file is scoped by the run's id."""

from __future__ import annotations

import json

import pytest

from fedunlearn.certify import RunAudit
from fedunlearn.certify.runaudit import dp_secret
from fedunlearn.errors import LedgerError, RunStateError
from fedunlearn.ledger import KeyStore, ShreddedError
from fedunlearn.ledger.keys import key_folder
from fedunlearn.runs import RunFolder
from tests.certify.conftest import small


def _run(tiny_model_dir, path, key_dir):
    settings = small(tiny_model_dir, path).replace(run={"key_dir": str(key_dir)})
    return RunFolder.create_or_resume(path, settings, tiny_model_dir).path


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_two_runs_in_one_key_folder_neither_clash_nor_shred_each_other(tiny_model_dir, tmp_path):
    shared = tmp_path / "keys"
    a, b = _run(tiny_model_dir, tmp_path / "a", shared), _run(tiny_model_dir, tmp_path / "b", shared)
    ids = {json.loads((r / "run.json").read_text())["run_id"] for r in (a, b)}
    assert len(ids) == 2  # random per run
    assert {key_folder(a), key_folder(b)} == {shared / f"run-{i}" for i in ids}

    # organization keys: same organization, other run, other key; shredding in one run leaves the other's
    ka, kb = KeyStore(a), KeyStore(b)
    assert ka.key_for("org-1") != kb.key_for("org-1")
    ka.shred("org-1")
    with pytest.raises(ShreddedError):
        ka.key_for("org-1", create=False)
    assert len(kb.key_for("org-1", create=False)) == 32 and not kb.is_shredded("org-1")

    # coordinator secrets: the second run gets its own instead of being refused or reading the first's
    with RunAudit.open(a) as audit_a, RunAudit.open(b) as audit_b:
        assert audit_a.verifier.raw != audit_b.verifier.raw
        assert audit_a.subject("org-1") != audit_b.subject("org-1")
    assert dp_secret(a) != dp_secret(b)

    # every key and secret file lives under its run's sub-folder; the run folders hold none
    for run in (a, b):
        assert not any(p.endswith((".key", ".pem", ".shredded")) for p in _files(run))
    top = {p.split("/", 1)[0] for p in _files(shared)}
    assert top == {f"run-{i}" for i in ids}
    # a copy of a run folder (a backup) is the same run: it finds the same keys, shredded ones included
    backup = tmp_path / "backup" / "a"
    backup.parent.mkdir()
    (backup).mkdir()
    (backup / "run.json").write_text((a / "run.json").read_text())
    assert KeyStore(backup).is_shredded("org-1") and key_folder(backup) == key_folder(a)


def test_a_run_without_an_id_keeps_the_unscoped_layout_and_a_bad_id_is_refused(tiny_model_dir, tmp_path):
    run = _run(tiny_model_dir, tmp_path / "old", tmp_path / "keys")
    meta = json.loads((run / "run.json").read_text())
    del meta["run_id"]  # made before run ids: keys/ and secrets/ directly in the key folder
    (run / "run.json").write_text(json.dumps(meta))
    assert key_folder(run) == tmp_path / "keys"
    RunAudit.open(run).close()  # opening the audit creates the coordinator's key in the unscoped layout
    assert (tmp_path / "keys" / "secrets" / "coordinator.pem").is_file()
    # a second unscoped run in the same folder is refused cleanly rather than sharing the first one's secrets
    other = _run(tiny_model_dir, tmp_path / "other", tmp_path / "keys")
    meta2 = json.loads((other / "run.json").read_text())
    del meta2["run_id"]
    (other / "run.json").write_text(json.dumps(meta2))
    with pytest.raises(RunStateError, match="already holds another run's coordinator secrets"):
        RunAudit.open(other)
    meta2["run_id"] = "../../etc"
    (other / "run.json").write_text(json.dumps(meta2))
    with pytest.raises(LedgerError, match="not a hex string"):
        key_folder(other)
