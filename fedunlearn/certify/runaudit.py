"""A run's audit log: ``RUN_DIR/audit.sqlite`` signed by the coordinator's Ed25519 key.

Files (see also :mod:`fedunlearn.runs`)::

    RUN_DIR/audit.sqlite              the append-only Merkle log (fedunlearn.audit.AuditLog)
    RUN_DIR/audit.pub                 the coordinator's C2SP verifier key (public; give it to auditors)
    RUN_DIR/secrets/coordinator.pem   the coordinator's Ed25519 private key (0600, folder 0700)
    RUN_DIR/secrets/subject-hmac.key  32 random bytes: the key of the subject hashes (0600)
    RUN_DIR/org-keys/<org>.pub        an organization's verifier key, enrolled when found

``secrets/`` can live elsewhere (``key_dir=``): it never has to travel with the log. Keep it out
of backups you hand to auditors; a verifier needs only ``audit.sqlite``, ``audit.pub`` (pinned
out of band), certificates and exported artifacts.

No personal data enters the log. Organizations appear as ``HMAC-SHA256(k, domain || name)``
with ``k`` known only to the coordinator: an outsider cannot test a guessed name, while the
coordinator can show an organization which hash is its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedunlearn.audit import (
    AuditLog,
    SigningKey,
    VerifierKey,
    as_verifier,
    generate_signing_key,
    load_public_key,
    load_signing_key,
    parse_canonical_json,
    save_private_key,
    save_public_key,
)
from fedunlearn.audit.canonical import decimal_str
from fedunlearn.errors import ConfigError, LedgerError, RunStateError

__all__ = ["AUDIT_FILE", "PUBLIC_KEY_FILE", "RunAudit", "file_sha256", "subject_hash"]

AUDIT_FILE = "audit.sqlite"
PUBLIC_KEY_FILE = "audit.pub"
_PRIVATE_FILE = "coordinator.pem"
_HMAC_FILE = "subject-hmac.key"
_SUBJECT_DOMAIN = b"fedunlearn/subject/v1\x00"


def subject_hash(hmac_key: bytes, name: str) -> str:
    """Keyed hash of an organization (or record) name: hex HMAC-SHA256 with domain separation."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"subject name {name!r} must be a non-empty string")
    return hmac.new(hmac_key, _SUBJECT_DOMAIN + name.encode("utf-8"), hashlib.sha256).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _origin_for(run_dir: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", run_dir.resolve().name) or "run"
    return f"fedunlearn.local/{name}/{secrets.token_hex(4)}"


class RunAudit:
    """The audit log of one run folder, with the coordinator's signing and HMAC keys.

    Open with :meth:`open`. Every ``log_*`` method appends one event; :meth:`checkpoint` signs
    the log at its current size (callers sign after each committed round and each erasure).
    """

    def __init__(self, run_dir: Path, log: AuditLog, signer: SigningKey, hmac_key: bytes) -> None:
        self.run_dir = run_dir
        self.log = log
        self.signer = signer
        self._hmac_key = hmac_key

    # -- set-up -----------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | Path, *, key_dir: str | Path | None = None) -> RunAudit:
        """Open the run's audit log, creating it and the coordinator's keys on first use.

        Parameters
        ----------
        run_dir : str or Path
            The run folder.
        key_dir : str or Path, optional
            Folder of the coordinator's secrets (default ``RUN_DIR/secrets``).

        Raises
        ------
        RunStateError
            If the log exists but its keys are missing (they cannot be recreated: a new key
            would not match the signed checkpoints).
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunStateError(f"run folder {str(run_dir)!r} does not exist: create the run first")
        keys = Path(key_dir) if key_dir is not None else run_dir / "secrets"
        pub = run_dir / PUBLIC_KEY_FILE
        private, hmac_file = keys / _PRIVATE_FILE, keys / _HMAC_FILE
        if pub.exists():
            origin = load_public_key(pub).name
            if not private.is_file() or not hmac_file.is_file():
                raise RunStateError(
                    f"run {str(run_dir)!r} has an audit log but its coordinator secrets are missing "
                    f"from {str(keys)!r}; restore {_PRIVATE_FILE} and {_HMAC_FILE} there or pass key_dir="
                )
            signer = load_signing_key(private, name=origin)
            if signer.verifier.vkey != load_public_key(pub).vkey:
                raise RunStateError(
                    f"{str(private)!r} does not match {str(pub)!r}: this is another run's key; "
                    "restore the run's own secrets"
                )
            hmac_key = _read_secret(hmac_file)
        else:
            if (run_dir / AUDIT_FILE).exists():
                raise RunStateError(
                    f"run {str(run_dir)!r} has {AUDIT_FILE} but no {PUBLIC_KEY_FILE}; restore the public key"
                )
            keys.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(keys, 0o700)
            origin = _origin_for(run_dir)
            signer = generate_signing_key(origin)
            save_private_key(signer, private)
            hmac_key = secrets.token_bytes(32)
            fd = os.open(hmac_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(hmac_key)
            save_public_key(signer, pub)
        log = AuditLog.open(run_dir / AUDIT_FILE, origin=origin, signer=signer)
        return cls(run_dir, log, signer, hmac_key)

    def close(self) -> None:
        self.log.close()

    def __enter__(self) -> RunAudit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def origin(self) -> str:
        return self.log.origin

    @property
    def verifier(self) -> VerifierKey:
        """The coordinator's public key (also in ``RUN_DIR/audit.pub``)."""
        return self.signer.verifier

    def subject(self, name: str) -> str:
        """The keyed hash that stands for organization ``name`` in the log and certificates."""
        return subject_hash(self._hmac_key, name)

    def events(self, kind: str | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Every (index, event) of the log, optionally only those of type ``kind``."""
        out = []
        for index, entry in enumerate(self.log.entries()):
            event = parse_canonical_json(entry)
            if kind is None or event.get("type") == kind:
                out.append((index, event))
        return out

    def append(self, event: Mapping[str, Any]) -> int:
        return self.log.append(event)

    def checkpoint(self) -> str:
        """Sign a checkpoint of the log at its current size; return the signed note."""
        return self.log.checkpoint()

    # -- enrolment and keys -----------------------------------------------------------------
    def enrolled_key(self, org: str) -> VerifierKey | None:
        """The organization's latest enrolled public key (named ``enrolled/<hash>``), or None."""
        who = self.subject(org)
        key = None
        for _, event in self.events():
            if event["type"] in ("enrolment", "key-rotation") and event.get("org") == who and event.get("key"):
                key = as_verifier(event["key"], f"enrolled/{who[:16]}")
        return key

    def is_enrolled(self, org: str) -> bool:
        who = self.subject(org)
        return any(e.get("org") == who for _, e in self.events("enrolment"))

    def enrol(self, org: str, *, shard: int, join_round: int, public_key: VerifierKey | None = None) -> int | None:
        """Log ``org``'s enrolment (and its key); idempotent. Returns the new index, or None."""
        current = self.enrolled_key(org)
        if self.is_enrolled(org) and (public_key is None or (current is not None and current.raw == public_key.raw)):
            return None
        event: dict[str, Any] = {"type": "enrolment", "org": self.subject(org), "shard": shard,
                                 "join_round": join_round}
        if public_key is not None:  # the raw key only: the owner's key name may identify it
            event["key"] = base64.b64encode(public_key.raw).decode("ascii")
        return self.append(event)

    def enrol_from_folder(self, orgs: Iterable[tuple[str, int, int]]) -> None:
        """Enrol (name, shard, join round) organizations, with ``RUN_DIR/org-keys/<name>.pub`` if present."""
        for name, shard, join_round in orgs:
            path = self.run_dir / "org-keys" / f"{name}.pub"
            key = load_public_key(path) if path.is_file() else None
            self.enrol(name, shard=shard, join_round=join_round, public_key=key)

    # -- rounds and exports -----------------------------------------------------------------
    def logged_checkpoints(self) -> set[int]:
        """Ledger checkpoint ids that already have a round-commit event."""
        return {int(e["checkpoint"]) for _, e in self.events("round-commit")}

    def log_round(self, ledger: Any, checkpoint: Any, *, eligible: Iterable[str] = (),
                  dp: Mapping[str, Any] | None = None) -> int:
        """Append the round-commit event of a ledger checkpoint (no names: keyed hashes only).

        ``eligible`` are the organizations that could have been sampled (client-level DP
        accounting counts a round for each of them); ``dp`` the mechanism's parameters.
        """
        parent = ledger.checkpoint(checkpoint.parent_id).hash if checkpoint.parent_id else None
        updates = []
        for c in ledger.contributions(checkpoint.id):
            item: dict[str, Any] = {"org": self.subject(c.org), "update": c.update_hash,
                                    "weight": decimal_str(c.weight, 12)}
            if c.metrics.get("dp-steps"):  # record-level DP-SGD: the accountant's input
                item["dp"] = {"z": decimal_str(float(c.metrics["dp-noise-multiplier"]), 12),
                              "q": decimal_str(float(c.metrics["dp-sample-rate"]), 12),
                              "steps": int(c.metrics["dp-steps"])}
            updates.append(item)
        event: dict[str, Any] = {
            "type": "round-commit", "checkpoint": checkpoint.id, "shard": checkpoint.shard,
            "round": checkpoint.round, "aggregate": checkpoint.hash, "parent": parent, "updates": updates,
            "eligible": sorted(self.subject(o) for o in eligible),
        }
        if dp:
            event["dp"] = {k: (decimal_str(v, 12) if isinstance(v, float) else v) for k, v in dp.items()}
        return self.append(event)

    def sync(self, ledger: Any, dp: Any = None) -> int:
        """Log every committed head-chain checkpoint that has no round-commit event yet; sign.

        Called after each committed round (and after a crash, erasure or resume): whoever
        committed the round, it reaches the log. With client-level DP settings ``dp`` (a
        :class:`~fedunlearn.config.DpSettings`) each event records the mechanism and the
        organizations eligible that round (the shard's members), which the accountant counts.
        """
        done = self.logged_checkpoints()
        added = 0
        for shard in sorted({o.shard for o in ledger.organizations()}):
            for ckpt in ledger.chain(shard):
                if ckpt.id in done:
                    continue
                eligible = ledger.members(shard, ckpt.round) if ckpt.round else []
                mech = None
                if dp is not None and dp.client_level and ckpt.round and eligible:
                    mech = {"z": float(dp.client_noise_multiplier), "q": float(dp.client_sample_rate),
                            "clip": float(dp.client_clip)}
                self.log_round(ledger, ckpt, eligible=eligible, dp=mech)
                added += 1
        if added:
            self.checkpoint()
        return added

    def log_export(self, served_hash: str, folders: Iterable[Path]) -> int:
        """Log the served hash and the SHA-256 of every file of the exported folders."""
        files: dict[str, str] = {}
        for folder in folders:
            folder = Path(folder)
            if not folder.is_dir():
                raise LedgerError(f"exported folder {str(folder)!r} does not exist; export the model first")
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                files[path.relative_to(self.run_dir).as_posix()] = file_sha256(path)
        return self.append({"type": "export", "served_hash": served_hash, "files": files})


def _read_secret(path: Path) -> bytes:
    mode = path.stat().st_mode
    if os.name == "posix" and mode & 0o077:
        raise LedgerError(f"secret {str(path)!r} is readable by others: run `chmod 600 {path}`")
    data = path.read_bytes()
    if len(data) != 32:
        raise LedgerError(f"secret {str(path)!r} holds {len(data)} bytes; expected 32: restore it from a backup")
    return data
