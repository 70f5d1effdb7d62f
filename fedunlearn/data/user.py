"""Users' own data: one organization's records from text files or a local Hugging Face dataset.

Accepted inputs for :func:`load_user_organization`:

* a folder of ``.txt`` files (one record per non-empty line) and/or ``.jsonl`` files (one object
  per line with a ``"text"`` string, an optional ``"id"`` and an optional ``"split"`` of
  ``"train"`` or ``"holdout"``); a single such file is accepted too;
* a dataset written by ``datasets``' ``save_to_disk``: a ``DatasetDict`` with a ``"train"`` split
  and optionally ``"holdout"`` or ``"test"``, or a ``Dataset`` with a ``"text"`` column (and an
  optional ``"id"`` column).

Record ids default to ``"<filename>:<line>"`` (``"<split>:<row>"`` for datasets). Without an
explicit holdout, records are split by hashing ``(seed, id)``: a record's side never depends on
the other records, so adding data does not move existing records between train and holdout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from fedunlearn.data.cache import cached_organization
from fedunlearn.data.io import read_jsonl
from fedunlearn.data.records import NAME_PATTERN, OrganizationData, Record
from fedunlearn.errors import ConfigError, DataError

__all__ = ["hash_split", "load_user_organization"]

_DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
_SUFFIXES = (".jsonl", ".txt")
_SPLITS = ("holdout", "train")

# (record, split or None when the source does not say)
_Labelled = tuple[Record, str | None]


def hash_split(record_id: str, holdout_fraction: float, seed: int = 0) -> str:
    """Assign a record to ``"train"`` or ``"holdout"`` from a hash of ``(seed, record_id)``.

    Parameters
    ----------
    record_id : str
        The record's id.
    holdout_fraction : float
        Probability of ``"holdout"`` over random ids, in ``[0, 1)``.
    seed : int, optional
        Changes the assignment of every record.

    Returns
    -------
    str
        ``"train"`` or ``"holdout"``.
    """
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return "holdout" if int.from_bytes(digest[:8], "big") / 2**64 < holdout_fraction else "train"


def _from_txt(path: Path) -> list[_Labelled]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot read {path}: {exc}; expected a readable UTF-8 text file with one record per "
            "line; convert the file to UTF-8 or remove it from the folder"
        ) from exc
    return [
        (Record(f"{path.name}:{number}", line.strip()), None)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


def _from_jsonl(path: Path) -> list[_Labelled]:
    out: list[_Labelled] = []
    for number, row in read_jsonl(path):
        if "text" not in row:
            raise DataError(
                f"{path}, line {number}: no 'text' field (found {sorted(row)}); expected an "
                'object such as {"text": "...", "id": "...", "split": "train"}; add the field'
            )
        text = row["text"]
        if not isinstance(text, str):
            raise DataError(
                f"{path}, line {number}: 'text' is {type(text).__name__} {text!r}, expected a "
                "string; quote the value or convert it to text"
            )
        rid = row.get("id", f"{path.name}:{number}")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise DataError(
                f"{path}, line {number}: 'id' is {rid!r}, expected a string or integer; "
                "fix the id or drop it to use the default <filename>:<line>"
            )
        split = row.get("split")
        if split is not None and split not in _SPLITS:
            raise DataError(
                f"{path}, line {number}: 'split' is {split!r}, expected 'train' or 'holdout'; "
                "fix the value or drop the field to split automatically"
            )
        if text.strip():
            out.append((Record(str(rid), text), split))
    return out


def _from_files(path: Path) -> list[_Labelled]:
    if path.is_file() and path.suffix not in _SUFFIXES:
        raise DataError(
            f"{path} is neither a .txt nor a .jsonl file; expected a folder of .txt/.jsonl files, "
            "one such file, or a folder saved with datasets' save_to_disk; convert the data"
        )
    if path.is_file():
        files = [path]
    else:  # top level only, sorted, so record order and default ids are reproducible
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _SUFFIXES)
    if not files:
        raise DataError(
            f"{path} holds no .txt or .jsonl files; expected one record per line in .txt files "
            "or JSON objects with a 'text' field in .jsonl files; add data files to the folder"
        )
    labelled: list[_Labelled] = []
    for file in files:
        labelled.extend(_from_jsonl(file) if file.suffix == ".jsonl" else _from_txt(file))
    return labelled


def _dataset_rows(path: Path, split: str, dataset: object) -> list[_Labelled]:
    columns = list(getattr(dataset, "column_names", []))
    if "text" not in columns:
        raise DataError(
            f"{path}: split {split!r} has no 'text' column (columns: {columns}); expected a "
            "string column named 'text'; rename it, e.g. dataset.rename_column('body', 'text')"
        )
    texts = dataset["text"]  # type: ignore[index]
    ids = dataset["id"] if "id" in columns else None  # type: ignore[index]
    out: list[_Labelled] = []
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(
                f"{path}: split {split!r}, row {row}: 'text' is {text!r}, expected a string; "
                "cast the column to strings or drop the row"
            )
        rid = f"{split}:{row}" if ids is None else str(ids[row])
        if text.strip():
            out.append((Record(rid, text), split))
    return out


def _from_dataset(path: Path) -> list[_Labelled]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError(
            f"{path} looks like a saved Hugging Face dataset but `datasets` is not installed; "
            "install it with `pip install datasets`"
        ) from exc
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many kinds; all mean "unreadable"
        raise DataError(
            f"cannot load the dataset at {path}: {type(exc).__name__}: {exc}; expected a folder "
            "written by Dataset.save_to_disk or DatasetDict.save_to_disk; save it again"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(
                f"{path}: the DatasetDict has splits {sorted(loaded)}, expected a 'train' split "
                "(and optionally 'holdout' or 'test'); rename the training split to 'train'"
            )
        rows = _dataset_rows(path, "train", loaded["train"])
        for name in ("holdout", "test"):
            if name in loaded:
                held = _dataset_rows(path, name, loaded[name])
                rows += [(record, "holdout") for record, _ in held]
                break
        return rows
    return [(record, None) for record, _ in _dataset_rows(path, "train", loaded)]


def _check_unique(path: Path, records: Iterable[Record]) -> None:
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise DataError(
                f"{path}: record id {record.id!r} occurs more than once; expected unique ids "
                "within an organization; fix the 'id' values or drop them to use defaults"
            )
        seen.add(record.id)


def load_user_organization(
    path: Path, name: str, *, holdout_fraction: float = 0.1, seed: int = 0
) -> OrganizationData:
    """Load one organization's own data from text files or a saved Hugging Face dataset.

    Parameters
    ----------
    path : Path
        A folder of ``.txt``/``.jsonl`` files, one such file, or a ``save_to_disk`` folder.
    name : str
        Organization name (letters, digits, ``.``, ``_``, ``-``).
    holdout_fraction : float, optional
        Share of records held out when the data marks no holdout, in ``[0, 1)``.
    seed : int, optional
        Seed of the hash split.

    Returns
    -------
    OrganizationData
        Train and holdout records, no canaries.

    Raises
    ------
    ConfigError
        If ``name`` or ``holdout_fraction`` is invalid.
    DataError
        If the path is missing, holds no records, or a file or dataset is malformed; the message
        names the file (and line for ``.jsonl``).

    Notes
    -----
    Cached by the path's files, ``(relative path, mtime, size)`` of each
    (:func:`fedunlearn.data.cache.cached_organization`): an unchanged source is read once per process.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"organization name {name!r} is invalid; expected 1-64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit; choose another name"
        )
    if (
        isinstance(holdout_fraction, bool)
        or not isinstance(holdout_fraction, (int, float))
        or not 0 <= holdout_fraction < 1
    ):
        raise ConfigError(
            f"holdout_fraction={holdout_fraction!r} is invalid; expected a number in [0, 1); "
            "use e.g. 0.1"
        )
    return cached_organization(path, ("user", name, float(holdout_fraction), seed),
                               lambda: _load_user(Path(path), name, holdout_fraction, seed))


def _load_user(path: Path, name: str, holdout_fraction: float, seed: int) -> OrganizationData:
    if not path.exists():
        raise DataError(
            f"{path} does not exist; expected a folder of .txt/.jsonl files, one such file, or a "
            "folder saved with datasets' save_to_disk; check the path"
        )
    is_dataset = path.is_dir() and any((path / m).is_file() for m in _DATASET_MARKERS)
    labelled = _from_dataset(path) if is_dataset else _from_files(path)
    if not labelled:
        raise DataError(
            f"{path} contains no records (only empty lines or texts); expected at least one "
            "non-empty text; add data"
        )
    _check_unique(path, (record for record, _ in labelled))
    explicit_holdout = any(split == "holdout" for _, split in labelled)
    train: list[Record] = []
    holdout: list[Record] = []
    for record, split in labelled:
        if split is None:
            split = "train" if explicit_holdout else hash_split(record.id, holdout_fraction, seed)
        (holdout if split == "holdout" else train).append(record)
    if not train:
        raise DataError(
            f"{path}: every record is in the holdout split; expected at least one training "
            "record; mark some records 'train' or lower holdout_fraction"
        )
    return OrganizationData(name=name, train=tuple(train), holdout=tuple(holdout))
