"""The on-disk format of a consortium, and the JSON Lines reader shared with users' data.

Layout written by :func:`save_consortium`::

    folder/
      manifest.json        format, version, organization order, params, sha256 of every file
      public.jsonl         {"id": ..., "text": ...} per public document
      canaries.json        {"digits": 4, "inserted": [...], "never_inserted": [...]}
      <org>/train.jsonl    {"id": ..., "text": ...} per training record (canary copies included)
      <org>/holdout.jsonl  same, never trained on
      <org>/canaries.json  {"organization": <org>, "canaries": [...]}

An organization folder alone is what a client needs (:func:`load_organization`); the manifest
lets :func:`load_consortium` detect files changed after saving.

Loading an organization is cached in memory by its files (:mod:`fedunlearn.data.cache`).
"""

from __future__ import annotations

import hashlib
import os
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedunlearn.data.records import (
    NAME_PATTERN,
    Canary,
    CanarySpace,
    Consortium,
    OrganizationData,
    Record,
)
from fedunlearn.data.cache import cached_organization
from fedunlearn.errors import ConfigError, DataError

__all__ = [
    "FORMAT",
    "VERSION",
    "load_consortium",
    "load_organization",
    "read_jsonl",
    "save_consortium",
]

FORMAT = "fedunlearn-consortium"
VERSION = 1
_TOP_LEVEL = ("canaries.json", "manifest.json", "public.jsonl")
_CANARY_FIELDS = ("id", "org", "prefix", "secret", "suffix", "repeats")
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    lines = [json.dumps(dict(row), ensure_ascii=False, sort_keys=True) + "\n" for row in rows]
    path.write_text("".join(lines), encoding="utf-8")


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
                    encoding="utf-8")


def _canary_dict(canary: Canary) -> dict[str, object]:
    return {name: getattr(canary, name) for name in _CANARY_FIELDS}


def save_consortium(c: Consortium, folder: Path) -> None:
    """Write a consortium to ``folder`` (created if needed; files of the same name are replaced).

    Parameters
    ----------
    c : Consortium
        The consortium to save.
    folder : Path
        Destination folder.

    Raises
    ------
    ConfigError
        If an organization name collides with a top-level file name.
    DataError
        If the folder cannot be written.
    """
    folder = Path(folder)
    for name in c.names:
        if name in _TOP_LEVEL:
            raise ConfigError(
                f"organization name {name!r} collides with the file {folder / name}; "
                f"expected a name other than {', '.join(_TOP_LEVEL)}; rename the organization"
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # organizations' records: the owner only, whatever the umask
        files: list[Path] = []
        for org in c.organizations:
            org_folder = folder / org.name
            org_folder.mkdir(exist_ok=True)
            for split, records in (("train", org.train), ("holdout", org.holdout)):
                _write_jsonl(
                    org_folder / f"{split}.jsonl", ({"id": r.id, "text": r.text} for r in records)
                )
            _write_json(
                org_folder / "canaries.json",
                {"organization": org.name, "canaries": [_canary_dict(k) for k in org.canaries]},
            )
            files += [org_folder / n for n in ("train.jsonl", "holdout.jsonl", "canaries.json")]
        _write_jsonl(
            folder / "public.jsonl",
            ({"id": f"public-{i}", "text": t} for i, t in enumerate(c.public)),
        )
        _write_json(
            folder / "canaries.json",
            {
                "digits": c.canary_space.digits,
                "inserted": [_canary_dict(k) for k in c.canaries],
                "never_inserted": [_canary_dict(k) for k in c.never_inserted],
            },
        )
        files += [folder / "public.jsonl", folder / "canaries.json"]
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "organizations": c.names,
            "seed": c.params.get("seed"),
            "params": dict(c.params),
            "files": {p.relative_to(folder).as_posix(): _sha256(p) for p in files},
        }
        _write_json(folder / "manifest.json", manifest)
    except OSError as exc:
        raise DataError(
            f"cannot write the consortium to {folder}: {exc}; expected a writable folder; "
            "check the path and its permissions"
        ) from exc


def read_jsonl(path: Path) -> list[tuple[int, dict[str, object]]]:
    """Read a JSON Lines file into ``(line number, object)`` pairs, skipping blank lines.

    Raises
    ------
    DataError
        If the file cannot be read, is not UTF-8, or a line is not a JSON object; the message
        names the file and the line.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot read {path}: {exc}; expected a readable UTF-8 JSON Lines file; "
            "check that the file exists and is UTF-8 text"
        ) from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}, line {number}: malformed JSON ({exc.msg}); expected one JSON object per "
                'line such as {"text": "..."}; fix or remove that line'
            ) from exc
        if not isinstance(value, dict):
            raise DataError(
                f"{path}, line {number}: found a JSON {type(value).__name__}, expected an object "
                'such as {"text": "..."}; wrap the line in an object with a "text" field'
            )
        rows.append((number, value))
    return rows


def _read_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(
            f"{path} is missing; expected it in a folder written by save_consortium; "
            "regenerate the folder or restore the file"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"cannot read {path}: {exc}; expected a UTF-8 JSON file written by save_consortium; "
            "regenerate the folder or restore the file"
        ) from exc


def _records(path: Path) -> tuple[Record, ...]:
    records = []
    for number, row in read_jsonl(path):
        text = row.get("text")
        if not isinstance(text, str):
            raise DataError(
                f"{path}, line {number}: 'text' is {text!r}, expected a string; "
                'give every line a "text" string field'
            )
        rid = row.get("id", f"{Path(path).name}:{number}")
        if not isinstance(rid, str):
            raise DataError(
                f"{path}, line {number}: 'id' is {rid!r}, expected a string; "
                "quote the id or drop it to use the default <filename>:<line>"
            )
        records.append(Record(rid, text))
    return tuple(records)


def _canaries(path: Path, rows: object) -> tuple[Canary, ...]:
    if not isinstance(rows, list):
        raise DataError(f"{path}: canaries are {type(rows).__name__}, expected a list; "
                        "regenerate the folder with save_consortium")
    canaries = []
    for i, row in enumerate(rows):
        types_ok = isinstance(row, dict) and set(row) == set(_CANARY_FIELDS) and all(
            isinstance(row[k], str) for k in _CANARY_FIELDS[:-1]
        )
        repeats = row.get("repeats") if isinstance(row, dict) else None
        if not types_ok or isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 0:
            raise DataError(
                f"{path}: canary #{i} is {row!r}; expected an object with string fields "
                "id, org, prefix, secret, suffix and an integer repeats >= 0; "
                "regenerate the folder with save_consortium"
            )
        canaries.append(Canary(**row))
    return tuple(canaries)


def load_organization(folder: Path, name: str | None = None) -> OrganizationData:
    """Load one saved organization folder (``train.jsonl``, ``holdout.jsonl``, ``canaries.json``).

    Parameters
    ----------
    folder : Path
        The organization folder; ``canaries.json`` is optional.
    name : str, optional
        Organization name; defaults to the folder name.

    Returns
    -------
    OrganizationData
        The organization's records and canaries.

    Raises
    ------
    DataError
        If the folder or a required file is missing or malformed (the message names the file).

    Notes
    -----
    Cached by the folder's files (:func:`fedunlearn.data.cache.cached_organization`): loading an unchanged folder again
    returns the same object without reading it.
    """
    return cached_organization(folder, ("saved", name), lambda: _load_organization(Path(folder), name))


def _load_organization(folder: Path, name: str | None) -> OrganizationData:
    if not folder.is_dir():
        raise DataError(
            f"organization folder {folder} does not exist; expected a folder with train.jsonl "
            "and holdout.jsonl; check the path or save the data with save_consortium"
        )
    for required in ("train.jsonl", "holdout.jsonl"):
        if not (folder / required).is_file():
            raise DataError(
                f"{folder / required} is missing; expected train.jsonl and holdout.jsonl in an "
                "organization folder under data.dir; add it, or for a folder of raw records without a "
                "holdout split name the folder in the organization's own entry (data = \"PATH\" under "
                "[[organizations]]), which splits off a holdout itself"
            )
    canaries: tuple[Canary, ...] = ()
    if (folder / "canaries.json").is_file():
        content = _read_json(folder / "canaries.json")
        if not isinstance(content, dict) or "canaries" not in content:
            raise DataError(
                f"{folder / 'canaries.json'} has no 'canaries' list; expected an object "
                '{"organization": ..., "canaries": [...]}; regenerate it with save_consortium'
            )
        canaries = _canaries(folder / "canaries.json", content["canaries"])
    return OrganizationData(
        name=folder.name if name is None else name,
        train=_records(folder / "train.jsonl"),
        holdout=_records(folder / "holdout.jsonl"),
        canaries=canaries,
    )


def _check_manifest(folder: Path, manifest: object) -> tuple[list[str], dict[str, object]]:
    """Validate the manifest and every file hash; return organization names and params."""
    path = folder / "manifest.json"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(
            f"{path} is not a {FORMAT} manifest; expected the manifest written by "
            "save_consortium; point to a folder written by save_consortium"
        )
    if manifest.get("version") != VERSION:
        raise DataError(
            f"{path} has format version {manifest.get('version')!r}, expected {VERSION}; "
            "regenerate the folder with this version of fedunlearn"
        )
    files, names = manifest.get("files"), manifest.get("organizations")
    if not isinstance(files, dict) or not isinstance(names, list):
        raise DataError(f"{path} lacks its 'files' or 'organizations' entry; "
                        "regenerate the folder with save_consortium")
    for name in names:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise DataError(
                f"{path} lists organization {name!r}; expected a folder name of letters, digits, "
                "'.', '_' or '-'; regenerate the folder with save_consortium"
            )
    for relative, expected in sorted(files.items()):
        target = folder / relative
        if not target.is_file():
            raise DataError(f"{target} is listed in {path} but missing; restore it or regenerate "
                            "the folder with save_consortium")
        actual = _sha256(target)
        if actual != expected:
            raise DataError(
                f"{target} has sha256 {actual} but {path} records {expected}; the file changed "
                "after saving; restore it or regenerate the folder with save_consortium"
            )
    params = manifest.get("params")
    return list(names), dict(params) if isinstance(params, dict) else {}


def load_consortium(folder: Path) -> Consortium:
    """Load a consortium written by :func:`save_consortium`, checking every file's sha256.

    Parameters
    ----------
    folder : Path
        The folder passed to :func:`save_consortium`.

    Returns
    -------
    Consortium
        Equal to the saved consortium.

    Raises
    ------
    DataError
        If the folder, the manifest or a file is missing, malformed or changed since saving.
    """
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise DataError(
            f"{folder / 'manifest.json'} is missing; expected a folder written by save_consortium; "
            "check the path (use load_organization for a single organization folder)"
        )
    names, params = _check_manifest(folder, _read_json(folder / "manifest.json"))
    organizations = tuple(load_organization(folder / n, n) for n in names)
    public = tuple(r.text for r in _records(folder / "public.jsonl"))
    shared = _read_json(folder / "canaries.json")
    path = folder / "canaries.json"
    if not isinstance(shared, dict) or not {"digits", "inserted", "never_inserted"} <= set(shared):
        raise DataError(f"{path} lacks 'digits', 'inserted' or 'never_inserted'; "
                        "regenerate the folder with save_consortium")
    try:
        space = CanarySpace(shared["digits"])
    except ConfigError as exc:
        raise DataError(f"{path}: {exc}") from exc
    inserted = _canaries(path, shared["inserted"])
    if inserted != tuple(k for o in organizations for k in o.canaries):
        raise DataError(
            f"{path} lists other inserted canaries than the organization folders; expected the "
            "same canaries in both; regenerate the folder with save_consortium"
        )
    return Consortium(
        organizations=organizations,
        public=public,
        canary_space=space,
        never_inserted=_canaries(path, shared["never_inserted"]),
        params=params,
    )
