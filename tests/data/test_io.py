"""Tests of the on-disk consortium format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fedunlearn.data import (
    CanarySpace,
    Consortium,
    OrganizationData,
    Record,
    generate_consortium,
    load_consortium,
    load_organization,
    save_consortium,
)
from fedunlearn.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def consortium() -> Consortium:
    return generate_consortium(
        organizations=["org-0", "org-1"], records_per_org=12, holdout_per_org=4,
        never_inserted=5, public_documents=6, seed=3,
    )


@pytest.fixture
def saved(tmp_path: Path, consortium: Consortium) -> Path:
    folder = tmp_path / "consortium"
    save_consortium(consortium, folder)
    return folder


def test_round_trip_is_equal(saved: Path, consortium: Consortium) -> None:
    assert load_consortium(saved) == consortium


def test_layout_and_manifest_hashes(saved: Path, consortium: Consortium) -> None:
    manifest = json.loads((saved / "manifest.json").read_text(encoding="utf-8"))
    expected = {"public.jsonl", "canaries.json"} | {
        f"{o}/{f}" for o in ("org-0", "org-1") for f in ("train.jsonl", "holdout.jsonl",
                                                          "canaries.json")
    }
    assert set(manifest["files"]) == expected
    for relative, digest in manifest["files"].items():
        assert hashlib.sha256((saved / relative).read_bytes()).hexdigest() == digest
    assert manifest["seed"] == 3 and manifest["params"] == dict(consortium.params)
    assert manifest["organizations"] == ["org-0", "org-1"]
    shared = json.loads((saved / "canaries.json").read_text(encoding="utf-8"))
    assert shared["digits"] == 4
    assert len(shared["inserted"]) == 6 and len(shared["never_inserted"]) == 5


def test_saving_twice_gives_identical_bytes(tmp_path: Path, consortium: Consortium) -> None:
    save_consortium(consortium, tmp_path / "a")
    save_consortium(consortium, tmp_path / "b")
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file():
            twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
            assert path.read_bytes() == twin.read_bytes()


def test_changed_file_is_detected(saved: Path) -> None:
    train = saved / "org-1" / "train.jsonl"
    train.write_text(train.read_text(encoding="utf-8") + '{"id": "x", "text": "extra"}\n',
                     encoding="utf-8")
    with pytest.raises(DataError, match=r"org-1.train\.jsonl has sha256"):
        load_consortium(saved)


def test_missing_listed_file_is_detected(saved: Path) -> None:
    (saved / "public.jsonl").unlink()
    with pytest.raises(DataError, match=r"public\.jsonl is listed"):
        load_consortium(saved)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"manifest\.json is missing"):
        load_consortium(tmp_path)


def test_foreign_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"manifest\.json is not a fedunlearn-consortium"):
        load_consortium(tmp_path)


def test_load_organization_folder(saved: Path, consortium: Consortium) -> None:
    assert load_organization(saved / "org-0") == consortium.organization("org-0")
    assert load_organization(saved / "org-0", "renamed").name == "renamed"


def test_load_organization_without_canaries(saved: Path, consortium: Consortium) -> None:
    (saved / "org-1" / "canaries.json").unlink()
    org = load_organization(saved / "org-1")
    assert org.canaries == () and org.train == consortium.organization("org-1").train


def test_load_organization_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        load_organization(tmp_path / "nowhere")


def test_load_organization_missing_holdout(saved: Path) -> None:
    (saved / "org-0" / "holdout.jsonl").unlink()
    with pytest.raises(DataError, match=r"holdout\.jsonl is missing"):
        load_organization(saved / "org-0")


def test_load_organization_malformed_line(saved: Path) -> None:
    (saved / "org-0" / "train.jsonl").write_text('{"id": "a", "text": "ok"}\n{oops\n',
                                                 encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.jsonl, line 2: malformed JSON"):
        load_organization(saved / "org-0")


def test_load_organization_bad_canary(saved: Path) -> None:
    (saved / "org-0" / "canaries.json").write_text(
        '{"organization": "org-0", "canaries": [{"id": "c"}]}', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"canaries\.json: canary #0"):
        load_organization(saved / "org-0")


def test_organization_name_colliding_with_a_file(tmp_path: Path) -> None:
    org = OrganizationData("public.jsonl", (Record("a", "t"),), ())
    with pytest.raises(ConfigError, match="'public.jsonl' collides"):
        save_consortium(Consortium((org,), (), CanarySpace(4), ()), tmp_path)


def test_consortium_without_params_round_trips(tmp_path: Path) -> None:
    org = OrganizationData("site-a", (Record("a", "tëxt"),), (Record("b", "other"),))
    c = Consortium((org,), ("public doc",), CanarySpace(2), ())
    save_consortium(c, tmp_path)
    assert load_consortium(tmp_path) == c
