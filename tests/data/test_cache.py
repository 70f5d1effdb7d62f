"""Organizations' data is read once per process while its files stay the same, again when they change."""

from __future__ import annotations

import json
import os
import time

import pytest

from fedunlearn.data import cache, load_organization, load_user_organization


@pytest.fixture(autouse=True)
def empty_cache():
    cache.clear_organization_cache()
    yield
    cache.clear_organization_cache()


def _age(folder, seconds: float = 60.0) -> None:
    """Make every file under ``folder`` look ``seconds`` old (out of the racy window)."""
    past = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (past, past))


def _saved_org(folder):
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": f"record {i}"}) + "\n"
                                                for i in range(5)))
    (folder / "holdout.jsonl").write_text(json.dumps({"id": "h0", "text": "held out"}) + "\n")
    return folder


def test_an_unchanged_folder_is_read_once(tmp_path):
    org = _saved_org(tmp_path / "org-0")
    _age(org)
    first = load_organization(org, "org-0")
    assert load_organization(org, "org-0") is first
    assert cache.cache_info() == {"hits": 1, "misses": 1, "size": 1}
    assert load_organization(org, "other-name") is not first  # the parameters are part of the key


@pytest.mark.parametrize("change", ["edit", "add", "remove"])
def test_a_change_to_the_files_is_read_again(tmp_path, change):
    org = _saved_org(tmp_path / "org-0")
    (org / "notes.txt").write_text("not read by the loader, but part of the folder\n")
    _age(org)
    first = load_organization(org, "org-0")
    if change == "edit":  # same size, other content: the modification time tells
        (org / "train.jsonl").write_text((org / "train.jsonl").read_text().replace("record 4", "record X"))
    elif change == "add":
        (org / "extra.txt").write_text("x\n")
    else:
        (org / "notes.txt").unlink()
    _age(org, 30.0)  # another time than before, still out of the racy window
    second = load_organization(org, "org-0")
    assert second is not first
    if change == "edit":
        assert "record X" in second.texts("train")


def test_files_written_in_the_racy_window_are_never_cached(tmp_path):
    org = _saved_org(tmp_path / "org-0")  # written just now: a same-size rewrite could keep its mtime
    first = load_organization(org, "org-0")
    (org / "train.jsonl").write_text((org / "train.jsonl").read_text().replace("record 4", "record Y"))
    second = load_organization(org, "org-0")
    assert "record Y" in second.texts("train") and second is not first
    assert cache.cache_info()["size"] == 0


def test_user_data_is_cached_by_its_files_and_parameters(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("\n".join(f"line {i}" for i in range(20)) + "\n")
    _age(folder)
    first = load_user_organization(folder, "acme", holdout_fraction=0.2, seed=1)
    assert load_user_organization(folder, "acme", holdout_fraction=0.2, seed=1) is first
    other = load_user_organization(folder, "acme", holdout_fraction=0.2, seed=2)
    assert other is not first
    (folder / "more.jsonl").write_text(json.dumps({"text": "another"}) + "\n")
    _age(folder, 30.0)
    assert len(load_user_organization(folder, "acme", holdout_fraction=0.2, seed=1).texts("train")) + len(
        load_user_organization(folder, "acme", holdout_fraction=0.2, seed=1).texts("holdout")) == 21


def test_errors_are_not_cached(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(Exception, match="does not exist"):
        load_organization(missing, "org-0")
    assert cache.cache_info() == {"hits": 0, "misses": 0, "size": 0}
