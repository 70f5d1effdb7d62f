"""A run folder: the settings it was made with, its ledger, data and exports.

Layout::

    RUN_DIR/
      run.json          format version, tool version, creation time, random run id, flat settings, base model path
      ledger.sqlite     lineage index (see fedunlearn.ledger)
      blobs/  keys/     content-addressed states; per-organization keys
      data/             the synthetic consortium the simulation trained on (when synthetic)
      metrics.jsonl     per-round evaluation metrics
      export/served/    the served model as a PEFT adapter folder
      export/shard-K/   each shard's adapter as a PEFT adapter folder
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fedunlearn import __version__
from fedunlearn.config import Settings, settings_from_flat, settings_to_flat
from fedunlearn.errors import ConfigError, RunStateError

__all__ = ["RUN_FORMAT", "RunFolder", "utc_now"]

RUN_FORMAT = 1


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Mode of a run folder (and of a consortium's data folder): the owner only, whatever the umask.
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True)
class RunFolder:
    """An existing or new run folder and the settings it is bound to."""

    path: Path
    settings: Settings
    base_model: Path

    @property
    def meta_file(self) -> Path:
        return self.path / "run.json"

    @property
    def served_dir(self) -> Path:
        return self.path / "export" / "served"

    def shard_dir(self, shard: int) -> Path:
        return self.path / "export" / f"shard-{shard}"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @classmethod
    def create_or_resume(cls, path: Path, settings: Settings, base_model: Path) -> RunFolder:
        """Create ``path`` for a new run, or reopen it to resume when its settings are the same.

        A folder made with different settings is refused (a resumed run must be the same run).
        """
        path = Path(path)
        if (path / "run.json").exists():
            run = cls.open(path)
            mine, theirs = settings_to_flat(settings), settings_to_flat(run.settings)
            diff = sorted(k for k in mine if k != "run.dir" and mine[k] != theirs.get(k))
            if diff:
                raise RunStateError(
                    f"run folder {str(path)!r} was made with other settings ({', '.join(diff)} differ); "
                    "choose a new --out folder or resume it with its own settings"
                )
            return run
        if path.exists() and any(path.iterdir()):
            raise RunStateError(
                f"{str(path)!r} exists, is not empty and is not a fedunlearn run folder: choose another --out folder"
            )
        path.mkdir(parents=True, exist_ok=True)
        # private whatever the umask: organizations' data, blobs, keys and logs live below, so only the
        # owner may list or open anything in the run (files inside keep their own modes)
        os.chmod(path, PRIVATE_DIR_MODE)
        meta = {
            "format": RUN_FORMAT,
            "fedunlearn": __version__,
            "created": utc_now(),
            "run_id": secrets.token_hex(8),  # scopes the run's files in a shared run.key-dir (fedunlearn.ledger.keys)
            "base_model": str(Path(base_model).resolve()),
            "settings": settings_to_flat(settings),
        }
        tmp = path / "run.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path / "run.json")
        return cls(path=path, settings=settings, base_model=Path(meta["base_model"]))

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """Open an existing run folder; RunStateError when it is not one or is of another format."""
        path = Path(path)
        meta_file = path / "run.json"
        if not meta_file.is_file():
            raise RunStateError(
                f"{str(path)!r} is not a fedunlearn run folder (no run.json): pass the --out folder of "
                "`fedunlearn simulate` or `fedunlearn demo`"
            )
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunStateError(f"{str(meta_file)!r} is not valid JSON: {exc}") from exc
        if meta.get("format") != RUN_FORMAT:
            raise RunStateError(
                f"run folder {str(path)!r} has format {meta.get('format')!r} (made by fedunlearn "
                f"{meta.get('fedunlearn', '?')}); this fedunlearn {__version__} reads format {RUN_FORMAT}: "
                "use the version that made it"
            )
        try:
            settings = settings_from_flat(meta["settings"])
        except (ConfigError, KeyError) as exc:
            raise RunStateError(f"run folder {str(path)!r} has unreadable settings: {exc}") from exc
        return cls(path=path, settings=settings, base_model=Path(meta["base_model"]))

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics_file, "a+", encoding="utf-8") as fh:
            if fh.tell() and not self._ends_with_newline():  # a line torn by a crash: start a fresh one
                fh.write("\n")
            fh.write(json.dumps(row, sort_keys=True) + "\n")

    def _ends_with_newline(self) -> bool:
        with open(self.metrics_file, "rb") as fh:
            fh.seek(-1, 2)
            return fh.read(1) == b"\n"

    def read_metrics(self) -> list[dict]:
        """Every metrics row; a line cut short by a kill mid-write is skipped, not fatal."""
        if not self.metrics_file.exists():
            return []
        rows = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:  # torn by a crash while it was written
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows
