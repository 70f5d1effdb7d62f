"""Removing an erased organization's records from a saved consortium (a simulation's ``RUN/data``).

In a deployment each organization keeps its own data on its own node and the coordinator never
holds a record. A simulation stands in for the organizations on one machine, so ``fedunlearn
simulate`` saves their data in the run folder; once an organization is erased the run must not go
on holding its records. :func:`remove_organization` deletes its folder and its inserted canaries
from the consortium's ``canaries.json`` and rewrites the manifest (which no longer lists it), so
:func:`~fedunlearn.data.io.load_consortium` loads the remaining organizations, hash-checked as before.

The judge (``fedunlearn evaluate``) still needs the erased organization's records to measure what
the model kept of them: :func:`restore_organization` regenerates them from the run's scenario,
as the simulation first generated them (seeded synthetic text, or the real text found on the
machine), and accepts them only if they hash to the fingerprint the run logged when the
organization first trained. The run folder then never holds them again.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from fedunlearn.data.io import _read_json, _sha256, _write_json
from fedunlearn.data.records import Consortium, OrganizationData
from fedunlearn.errors import DataError

__all__ = ["remove_organization", "restore_organizations"]


def remove_organization(folder: Path, name: str) -> int:
    """Delete ``name``'s records and canaries from the consortium saved in ``folder``.

    Returns the number of files deleted (0 when it holds none of them: idempotent). The files are
    removed first, then ``canaries.json`` and the manifest are rewritten (each atomically), so a
    process killed in between leaves a folder that a second call completes.
    """
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return 0
    manifest = _read_json(manifest_path)
    org_folder = folder / name
    removed = sum(1 for p in org_folder.rglob("*") if p.is_file()) if org_folder.is_dir() else 0
    if org_folder.is_dir():
        shutil.rmtree(org_folder)
    names = [n for n in manifest.get("organizations", []) if n != name]
    shared = _read_json(folder / "canaries.json")
    prefix = f"{name}/"
    listed = [k for k in shared.get("inserted", []) if k.get("org") != name]
    if names == manifest.get("organizations") and listed == shared.get("inserted") and not removed:
        return 0
    _atomic_json(folder / "canaries.json", {**shared, "inserted": listed})
    files = {k: v for k, v in manifest.get("files", {}).items() if not k.startswith(prefix)}
    files["canaries.json"] = _sha256(folder / "canaries.json")
    _atomic_json(manifest_path, {**manifest, "organizations": names, "files": files,
                                 "removed": int(manifest.get("removed", 0)) + 1})
    return removed


def _atomic_json(path: Path, value: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    _write_json(tmp, value)
    tmp.replace(path)


def restore_organizations(consortium: Consortium, names: list[str], regenerate, fingerprints: Mapping[str, str]
                          ) -> Consortium:
    """``consortium`` with the organizations ``names`` it lacks regenerated and put back in order.

    ``regenerate()`` returns the full consortium as the run's scenario generates it; each missing
    organization is taken from it only if its records hash to ``fingerprints[name]`` (the run's
    logged data fingerprint).

    Raises
    ------
    DataError
        An organization cannot be regenerated (e.g. its real-text source is not on this machine),
        or what is regenerated is not the data the run trained on.
    """
    have = {o.name: o for o in consortium.organizations}
    missing = [n for n in names if n not in have]
    if not missing:
        return consortium
    why = ("its records were removed from the run folder when it was erased; the judge regenerates them "
           "from the run's scenario")
    try:
        full = regenerate()
    except Exception as exc:  # noqa: BLE001 - whatever the generator raised, said with its context
        raise DataError(f"cannot regenerate the data of {', '.join(missing)} ({why}): {exc}") from exc
    for name in missing:
        data: OrganizationData = full.organization(name)
        expected = fingerprints.get(name)
        if not expected or data.fingerprint() != expected:
            raise DataError(
                f"the regenerated data of {name!r} is not the data it trained on (fingerprint "
                f"{data.fingerprint()[:12]}…, the run logged {str(expected)[:12] or 'none'}…); {why}, which needs "
                "the same scenario and text sources as the run; evaluate it on the machine that ran it"
            )
        have[name] = data
    return replace(consortium, organizations=tuple(have[n] for n in names if n in have),
                   params=dict(consortium.params))
