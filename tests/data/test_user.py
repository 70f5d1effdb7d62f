"""Tests of loading users' own data."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedunlearn.data import load_user_organization
from fedunlearn.data.user import hash_split
from fedunlearn.errors import ConfigError, DataError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[object]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_txt_folder(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", "first line\n\n  second line  \n")
    _write(tmp_path / "b.txt", "third\n")
    _write(tmp_path / "ignored.csv", "x,y\n")
    org = load_user_organization(tmp_path, "site-a", holdout_fraction=0)
    assert org.name == "site-a" and org.holdout == () and org.canaries == ()
    assert [(r.id, r.text) for r in org.train] == [
        ("a.txt:1", "first line"), ("a.txt:3", "second line"), ("b.txt:1", "third")
    ]


def test_hash_split_is_deterministic_and_partitions(tmp_path: Path) -> None:
    _write(tmp_path / "data.txt", "".join(f"record {i}\n" for i in range(200)))
    org = load_user_organization(tmp_path, "site-a", holdout_fraction=0.25, seed=1)
    assert org == load_user_organization(tmp_path, "site-a", holdout_fraction=0.25, seed=1)
    assert len(org.train) + len(org.holdout) == 200
    assert 25 <= len(org.holdout) <= 75
    assert not {r.id for r in org.train} & {r.id for r in org.holdout}
    other = load_user_organization(tmp_path, "site-a", holdout_fraction=0.25, seed=2)
    assert other.holdout != org.holdout


def test_jsonl_with_ids(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"text": "alpha", "id": "r1"}, {"text": "beta"}, {"text": "  "}])
    org = load_user_organization(tmp_path, "site-a", holdout_fraction=0)
    assert [(r.id, r.text) for r in org.train] == [("r1", "alpha"), ("d.jsonl:2", "beta")]


def test_jsonl_with_explicit_split(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [
        {"text": "a", "split": "train"}, {"text": "b", "split": "holdout"}, {"text": "c"},
    ])
    org = load_user_organization(tmp_path, "site-a", holdout_fraction=0.99)
    assert org.texts("train") == ["a", "c"] and org.texts("holdout") == ["b"]


def test_single_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "only.txt", "one\ntwo\n")
    assert load_user_organization(path, "site-a", holdout_fraction=0).texts() == ["one", "two"]


def test_saved_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["x1", "x2", "x3"], "label": [0, 1, 0]}).save_to_disk(
        str(tmp_path / "ds")
    )
    org = load_user_organization(tmp_path / "ds", "site-a", holdout_fraction=0)
    assert [(r.id, r.text) for r in org.train] == [("train:0", "x1"), ("train:1", "x2"),
                                                   ("train:2", "x3")]


def test_saved_dataset_dict_with_test_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a", "b"], "id": ["i1", "i2"]}),
        "test": datasets.Dataset.from_dict({"text": ["c"], "id": ["i3"]}),
    }).save_to_disk(str(tmp_path / "dd"))
    org = load_user_organization(tmp_path / "dd", "site-a")
    assert [r.id for r in org.train] == ["i1", "i2"] and org.texts("holdout") == ["c"]


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing-dir does not exist"):
        load_user_organization(tmp_path / "missing-dir", "site-a")


def test_folder_without_data_files(tmp_path: Path) -> None:
    _write(tmp_path / "notes.csv", "a\n")
    with pytest.raises(DataError, match=f"{tmp_path.name} holds no .txt or .jsonl files"):
        load_user_organization(tmp_path, "site-a")


def test_folder_without_records(tmp_path: Path) -> None:
    _write(tmp_path / "blank.txt", "\n   \n")
    with pytest.raises(DataError, match=f"{tmp_path.name} contains no records"):
        load_user_organization(tmp_path, "site-a")


def test_malformed_json_line(tmp_path: Path) -> None:
    _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: malformed JSON"):
        load_user_organization(tmp_path, "site-a")


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    _write(tmp_path / "list.jsonl", '["text"]\n')
    with pytest.raises(DataError, match=r"list\.jsonl, line 1: found a JSON list"):
        load_user_organization(tmp_path, "site-a")


def test_line_without_text(tmp_path: Path) -> None:
    _jsonl(tmp_path / "notext.jsonl", [{"text": "ok"}, {"body": "x"}])
    with pytest.raises(DataError, match=r"notext\.jsonl, line 2: no 'text' field"):
        load_user_organization(tmp_path, "site-a")


def test_non_string_text(tmp_path: Path) -> None:
    _jsonl(tmp_path / "num.jsonl", [{"text": 42}])
    with pytest.raises(DataError, match=r"num\.jsonl, line 1: 'text' is int 42"):
        load_user_organization(tmp_path, "site-a")


def test_bad_split_value(tmp_path: Path) -> None:
    _jsonl(tmp_path / "split.jsonl", [{"text": "a", "split": "validation"}])
    with pytest.raises(DataError, match=r"split\.jsonl, line 1: 'split' is 'validation'"):
        load_user_organization(tmp_path, "site-a")


def test_duplicate_ids(tmp_path: Path) -> None:
    _jsonl(tmp_path / "dup.jsonl", [{"text": "a", "id": "x"}, {"text": "b", "id": "x"}])
    with pytest.raises(DataError, match="record id 'x' occurs more than once"):
        load_user_organization(tmp_path, "site-a")


def test_all_holdout_is_rejected(tmp_path: Path) -> None:
    _jsonl(tmp_path / "h.jsonl", [{"text": "a", "split": "holdout"}])
    with pytest.raises(DataError, match="every record is in the holdout"):
        load_user_organization(tmp_path, "site-a")


def test_unreadable_dataset(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "broken-ds"
    folder.mkdir()
    _write(folder / "state.json", "{not json")
    with pytest.raises(DataError, match="cannot load the dataset at .*broken-ds"):
        load_user_organization(folder, "site-a")


def test_dataset_without_text_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": ["a"]}).save_to_disk(str(tmp_path / "nobody"))
    with pytest.raises(DataError, match=r"nobody: split 'train' has no 'text' column.*'body'"):
        load_user_organization(tmp_path / "nobody", "site-a")


def test_dataset_dict_without_train(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(
        str(tmp_path / "dd")
    )
    with pytest.raises(DataError, match=r"dd: the DatasetDict has splits \['validation'\]"):
        load_user_organization(tmp_path / "dd", "site-a")


@pytest.mark.parametrize("fraction", [-0.1, 1.0, "0.1", True])
def test_bad_holdout_fraction(tmp_path: Path, fraction: object) -> None:
    with pytest.raises(ConfigError, match="holdout_fraction"):
        load_user_organization(
            tmp_path, "site-a", holdout_fraction=fraction  # type: ignore[arg-type]
        )


def test_bad_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'../x'"):
        load_user_organization(tmp_path, "../x")


@settings(max_examples=30, deadline=None)
@given(lines=st.lists(st.text(st.characters(blacklist_categories=("Cs", "Zl", "Zp", "Cc")),
                              min_size=1, max_size=20), min_size=1, max_size=15),
       fraction=st.floats(0, 0.9), seed=st.integers(0, 1000))
def test_split_partitions_records_independently_of_others(
    lines: list[str], fraction: float, seed: int
) -> None:
    kept = [line.strip() for line in lines if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp) / "x.txt", "\n".join(lines) + "\n")
        if not kept:
            with pytest.raises(DataError):
                load_user_organization(Path(tmp), "site-a", holdout_fraction=fraction, seed=seed)
            return
        try:
            org = load_user_organization(Path(tmp), "site-a", holdout_fraction=fraction, seed=seed)
        except DataError as exc:  # everything hashed into the holdout
            assert "every record is in the holdout" in str(exc)
            return
    assert sorted(org.texts("train") + org.texts("holdout")) == sorted(kept)
    for record in org.train + org.holdout:
        side = "holdout" if record in org.holdout else "train"
        assert hash_split(record.id, fraction, seed) == side


def test_single_file_of_another_kind(tmp_path: Path) -> None:
    path = _write(tmp_path / "table.csv", "a,b\n")
    with pytest.raises(DataError, match=r"table\.csv is neither a \.txt nor a \.jsonl"):
        load_user_organization(path, "site-a")
