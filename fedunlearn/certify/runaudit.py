"""A run's audit log: ``RUN_DIR/audit.sqlite`` signed by the coordinator's Ed25519 key.

Files (see also :mod:`fedunlearn.runs`)::

    RUN_DIR/audit.sqlite              the append-only Merkle log (fedunlearn.audit.AuditLog)
    RUN_DIR/audit.pub                 the coordinator's C2SP verifier key (public; give it to auditors)
    RUN_DIR/secrets/coordinator.pem   the coordinator's current Ed25519 private key (0600, folder 0700)
    RUN_DIR/secrets/subject-hmac.key  32 random bytes: the key of the subject hashes (0600)
    RUN_DIR/secrets/dp-sampling.key   32 random bytes: seeds DP-FedAvg's sampling and noise (0600)
    RUN_DIR/org-keys/<org>.pub        an organization's verifier key, enrolled when found

``secrets/`` (like the ledger's ``keys/``) lives in the run's key folder: the run folder by default,
or the run's own ``run-<run id>/`` sub-folder of ``run.key-dir`` (see
:func:`fedunlearn.ledger.keys.key_folder`), so that a copy of the run folder holds no secret. Keep it out of backups you hand to auditors; a verifier needs only
``audit.sqlite``, ``audit.pub`` (pinned out of band), certificates and exported artifacts.

``audit.pub`` is the run's *first* coordinator key and never changes. :meth:`RunAudit.rotate_key`
replaces the signing key: the new key enters the log in a ``key-rotation`` event attested by the old
one (see :mod:`fedunlearn.audit.rotation`) and signs every later checkpoint and certificate;
auditors follow the chain from the pinned first key.

No personal data enters the log. Organizations appear as ``HMAC-SHA256(k, domain || name)``
with ``k`` known only to the coordinator: an outsider cannot test a guessed name, while the
coordinator can show an organization which hash is its own.
"""

from __future__ import annotations

import base64
import contextlib
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
    KeyHistory,
    SigningKey,
    VerifierKey,
    as_verifier,
    attest_rotation,
    generate_signing_key,
    key_history,
    load_public_key,
    load_signing_key,
    parse_canonical_json,
    save_private_key,
    save_public_key,
    rotation_event,
    verify_rotation,
)
from fedunlearn.audit.canonical import decimal_str
from fedunlearn.errors import AuthorizationError, ConfigError, FedUnlearnError, LedgerError, RunStateError
from fedunlearn.ledger.keys import key_folder

__all__ = ["AUDIT_FILE", "PUBLIC_KEY_FILE", "RunAudit", "dp_secret", "file_sha256", "subject_hash"]

AUDIT_FILE = "audit.sqlite"
PUBLIC_KEY_FILE = "audit.pub"
_PRIVATE_FILE = "coordinator.pem"
_NEXT_FILE = "coordinator.next.pem"
_HMAC_FILE = "subject-hmac.key"
_SAMPLING_FILE = "dp-sampling.key"
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
        self.key_dir: Path = key_folder(run_dir) / "secrets"

    # -- set-up -----------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | Path, *, key_dir: str | Path | None = None) -> RunAudit:
        """Open the run's audit log, creating it and the coordinator's keys on first use.

        Parameters
        ----------
        run_dir : str or Path
            The run folder.
        key_dir : str or Path, optional
            Folder of the coordinator's secrets (default ``secrets/`` of the run's key folder:
            ``RUN_DIR/secrets``, or ``<run.key-dir>/run-<run id>/secrets``).

        Raises
        ------
        RunStateError
            If the log exists but its keys are missing or are not the key in force (they cannot
            be recreated: a new key would not match the signed checkpoints), or the key folder
            already holds another run's secrets.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunStateError(f"run folder {str(run_dir)!r} does not exist: create the run first")
        keys = Path(key_dir) if key_dir is not None else key_folder(run_dir) / "secrets"
        pub = run_dir / PUBLIC_KEY_FILE
        private, hmac_file = keys / _PRIVATE_FILE, keys / _HMAC_FILE
        if pub.exists():
            root = load_public_key(pub)
            if not private.is_file() or not hmac_file.is_file():
                raise RunStateError(
                    f"run {str(run_dir)!r} has an audit log but its coordinator secrets are missing "
                    f"from {str(keys)!r}; restore {_PRIVATE_FILE} and {_HMAC_FILE} there (or set run.key-dir "
                    "to the folder holding them, or pass key_dir=)"
                )
            log = AuditLog.open(run_dir / AUDIT_FILE, origin=root.name)
            current = key_history(root.name, log.entries(), root).current
            signer = _current_signer(private, keys / _NEXT_FILE, root.name, current)
            if signer is None:
                log.close()
                raise RunStateError(
                    f"{str(private)!r} is not the coordinator key in force for {str(run_dir)!r} (key ID "
                    f"{current.key_id.hex()}): it is another run's key or a rotated-out one; restore the "
                    "run's own secrets"
                )
            log.signer = signer
            hmac_key = _read_secret(hmac_file)
        else:
            if (run_dir / AUDIT_FILE).exists():
                raise RunStateError(
                    f"run {str(run_dir)!r} has {AUDIT_FILE} but no {PUBLIC_KEY_FILE}; restore the public key"
                )
            if private.exists() or hmac_file.exists():
                raise RunStateError(
                    f"the key folder {str(keys)!r} already holds another run's coordinator secrets; give "
                    "every run its own run.key-dir"
                )
            keys.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(keys, 0o700)
            origin = _origin_for(run_dir)
            signer = generate_signing_key(origin)
            save_private_key(signer, private)
            hmac_key = secrets.token_bytes(32)
            _write_secret(hmac_file, hmac_key)
            save_public_key(signer, pub)
            log = AuditLog.open(run_dir / AUDIT_FILE, origin=origin, signer=signer)
        audit = cls(run_dir, log, signer, hmac_key)
        audit.key_dir = keys
        return audit

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
    def key_history(self) -> KeyHistory:
        """The coordinator and organization keys in force when, replayed from the log."""
        return key_history(self.origin, self.log.entries(), load_public_key(self.run_dir / PUBLIC_KEY_FILE))

    def enrolled_key(self, org: str) -> VerifierKey | None:
        """The organization's key in force (enrolled, then attested rotations), named ``enrolled/<hash>``."""
        who = self.subject(org)
        raw = self.key_history().org_key(who)
        return None if raw is None else as_verifier(raw, f"enrolled/{who[:16]}")

    def is_enrolled(self, org: str) -> bool:
        who = self.subject(org)
        return any(e.get("org") == who for _, e in self.events("enrolment"))

    def enrol(self, org: str, *, shard: int, join_round: int, public_key: VerifierKey | None = None) -> int | None:
        """Log ``org``'s enrolment (and its first key); idempotent. Returns the new index, or None.

        Raises
        ------
        RunStateError
            If ``org`` already has another key: a key changes only by an attested rotation
            (:meth:`rotate_org_key`, ``fedunlearn keys rotate --org``).
        """
        current = self.enrolled_key(org)
        if current is not None and public_key is not None and current.raw != public_key.raw:
            raise RunStateError(
                f"organization {org!r} already enrolled key {current.key_id.hex()}; a new key replaces it only "
                "through a rotation signed by the old key: fedunlearn keys rotate --org ... --key OLD.pem"
            )
        if self.is_enrolled(org) and (public_key is None or current is not None):
            return None
        event: dict[str, Any] = {"type": "enrolment", "org": self.subject(org), "shard": shard,
                                 "join_round": join_round}
        if public_key is not None:  # the raw key only: the owner's key name may identify it
            event["key"] = base64.b64encode(public_key.raw).decode("ascii")
        return self.append(event)

    def rotate_key(self) -> VerifierKey:
        """Replace the coordinator's signing key; return the new public key.

        The log is checkpointed under the old key, a ``key-rotation`` event attested by the old
        key is appended and checkpointed under the new key, which from then on signs every
        checkpoint and certificate. The old private key file is overwritten. A crash midway is
        completed by the next :meth:`open` (the new key waits in ``coordinator.next.pem``).
        """
        new = generate_signing_key(self.origin)
        staged = self.key_dir / _NEXT_FILE
        save_private_key(new, staged, overwrite=True)
        self.checkpoint()  # everything so far sealed by the old key
        self.append(rotation_event(attest_rotation(self.signer, new.verifier, origin=self.origin, role="coordinator")))
        self.signer = self.log.signer = new
        self.checkpoint()
        _shred_file(self.key_dir / _PRIVATE_FILE)
        os.replace(staged, self.key_dir / _PRIVATE_FILE)
        return new.verifier

    def rotate_org_key(self, org: str, statement: Mapping[str, Any]) -> int:
        """Log an organization's key rotation (a statement from :func:`~fedunlearn.audit.attest_rotation`).

        Raises
        ------
        AuthorizationError
            If ``org`` has no enrolled key, or the statement is not signed by its key in force
            (the refusal is logged and signed first).
        """
        current = self.enrolled_key(org)
        why = ("the organization has no enrolled key to rotate" if current is None
               else verify_rotation(statement, self.origin, current.raw))
        if why is None and statement.get("role") != "organization":
            why = f"the statement is for role {statement.get('role')!r}, not 'organization'"
        if why is not None:
            self.append({"type": "refusal", "what": "key-rotation", "reason": why, "subjects": [self.subject(org)]})
            self.checkpoint()
            raise AuthorizationError(f"key rotation of {org!r} refused (logged): {why}")
        index = self.append(rotation_event(statement, org=self.subject(org)))
        self.checkpoint()
        return index

    def dp_secret(self) -> bytes:
        """The run's secret DP key (see :func:`dp_secret`)."""
        return dp_secret(self.run_dir, key_dir=self.key_dir)

    def enrol_from_folder(self, orgs: Iterable[tuple[str, int, int]]) -> None:
        """Enrol (name, shard, join round) organizations, with ``RUN_DIR/org-keys/<name>.pub`` if present."""
        enrolled = {e.get("org") for _, e in self.events("enrolment")}  # one pass: enrol() replays the log per call
        for name, shard, join_round in orgs:
            path = self.run_dir / "org-keys" / f"{name}.pub"
            key = load_public_key(path) if path.is_file() else None
            if key is None:  # what enrol() does without a key, minus its two log replays (O(N²) at 1000 orgs)
                if self.subject(name) not in enrolled:
                    self.append({"type": "enrolment", "org": self.subject(name), "shard": shard,
                                 "join_round": join_round})
                    enrolled.add(self.subject(name))
                continue
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
                                    "weight": decimal_str(c.weight, 12), "examples": int(c.num_examples)}
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

    def log_budget_exhausted(self, org: str, *, shard: int, round: int, from_round: int, by: str, level: str,
                             epsilon: float, max_epsilon: float, delta: float) -> int:
        """Log that ``org``'s DP budget is spent: it trains no round from ``from_round`` on; sign.

        ``by`` is ``"organization"`` (it refused round ``round`` before training) or
        ``"coordinator"`` (the audit log's account predicted round ``round`` over the budget).
        """
        if by not in ("organization", "coordinator"):
            raise ConfigError(f"by = {by!r}: expected 'organization' or 'coordinator'")
        index = self.append({
            "type": "budget-exhausted", "org": self.subject(org), "shard": int(shard), "round": int(round),
            "from_round": int(from_round), "by": by, "level": level,
            "epsilon": decimal_str(min(float(epsilon), 1e300), 6), "max_epsilon": decimal_str(float(max_epsilon), 6),
            "delta": decimal_str(float(delta), 12),
        })
        self.checkpoint()
        return index

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

    def log_export_copy(self, served_hash: str, folder: Path) -> int:
        """Log a copy of the served adapter written outside the run (``fedunlearn export --out``):
        where it went, the served hash it copies and the SHA-256 of each of its files, so that
        ``verify --export`` can say which copy a folder is, and that a stale one was replaced."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.append({"type": "export-copy", "served_hash": served_hash, "destination": str(folder.resolve()),
                            "files": files})


def subject_function(run_dir: str | Path, *, key_dir: str | Path | None = None):
    """``name -> keyed hash`` of the run (its HMAC secret), or ``None`` when the secret is not here."""
    try:
        folder = Path(key_dir) if key_dir is not None else key_folder(run_dir) / "secrets"
        key = _read_secret(folder / _HMAC_FILE)
    except (OSError, FedUnlearnError):
        return None
    return lambda name: subject_hash(key, name)


def dp_secret(run_dir: str | Path, *, key_dir: str | Path | None = None) -> bytes:
    """The run's 32-byte secret DP key, created on first use in the run's ``secrets/``.

    It seeds DP-FedAvg's sampling and noise (:mod:`fedunlearn.federation.dpfedavg`). It is kept with
    the other secrets and never derived from public data (the run seed is public), so the sample
    stays secret, while a retrained shard replays the same sampling.
    """
    folder = Path(key_dir) if key_dir is not None else key_folder(run_dir) / "secrets"
    path = folder / _SAMPLING_FILE
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):  # two processes: the first one wins
            _write_secret(path, secrets.token_bytes(32))
    return _read_secret(path)


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _shred_file(path: Path) -> None:
    """Overwrite a key file before it is replaced (see the limits in fedunlearn.ledger.keys)."""
    with contextlib.suppress(FileNotFoundError), open(path, "r+b") as fh:
        fh.write(os.urandom(max(fh.seek(0, 2), 32)))
        fh.flush()
        os.fsync(fh.fileno())


def _current_signer(private: Path, staged: Path, name: str, current: VerifierKey) -> SigningKey | None:
    """The private key matching the key in force; completes a rotation interrupted before its rename."""
    signer = load_signing_key(private, name=name)
    if signer.verifier.raw == current.raw:
        return signer
    if staged.is_file():
        staged_key = load_signing_key(staged, name=name)
        if staged_key.verifier.raw == current.raw:
            os.replace(staged, private)
            return staged_key
    return None


def _read_secret(path: Path) -> bytes:
    mode = path.stat().st_mode
    if os.name == "posix" and mode & 0o077:
        raise LedgerError(f"secret {str(path)!r} is readable by others: run `chmod 600 {path}`")
    data = path.read_bytes()
    if len(data) != 32:
        raise LedgerError(f"secret {str(path)!r} holds {len(data)} bytes; expected 32: restore it from a backup")
    return data
