"""Verify a run folder as an outside auditor: log, checkpoints, certificates, exported artifacts.

Checks, each failure reported with what failed:

1. the audit log: every leaf hash recomputed from its entry, every checkpoint's signature and
   root, consistency of consecutive checkpoints (RFC 9162), with every certificate's receipt
   checkpoint as a known checkpoint (which exposes a rolled-back log);
2. each certificate: byte-for-byte canonical JSON, signed by the pinned coordinator key, its
   receipt's checkpoint signed, its ``certificate`` event included at the stated index (proof
   checked against the signed root, never a size taken from the proof), and the event holding the
   SHA-256 of the certificate body;
3. exported artifacts: the latest ``export`` event's files re-hashed; the ledger's served hash
   equal to the logged one; every readable ledger blob re-hashed.

The coordinator's public key should be pinned out of band (``--public-key``); by default the run
folder's ``audit.pub`` is used, which only shows the folder is self-consistent. The pinned key is the
run's *first* key: after rotations (``fedunlearn keys rotate``) every checkpoint and certificate
must be signed by the key in force when it was made, each new key attested by its predecessor in a
``key-rotation`` event (see :mod:`fedunlearn.audit.rotation`); a checkpoint or certificate signed by
a key that never rotated in, or by a rotated-out key, fails, and so does a rotation the previous
key did not sign.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path

from fedunlearn.audit import (
    AuditLog,
    KeyHistory,
    VerifierKey,
    key_history,
    load_public_key,
    parse_canonical_json,
    verify_entry_in_checkpoint,
)
from fedunlearn.certify.certificate import Certificate, signed_message
from fedunlearn.certify.runaudit import AUDIT_FILE, PUBLIC_KEY_FILE, file_sha256
from fedunlearn.errors import FedUnlearnError, IntegrityError, RunStateError

__all__ = ["RunVerification", "verify_certificate", "verify_run"]


@dataclass
class RunVerification:
    """Outcome of :func:`verify_run`: ``ok`` iff ``problems`` is empty; ``checked`` lists what passed."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _b64(text: object) -> bytes:
    """Decode canonical standard base64 only (a flipped padding bit must not pass)."""
    raw = base64.b64decode(str(text), validate=True)
    if base64.b64encode(raw).decode("ascii") != text:
        raise binascii.Error(f"{str(text)[:20]!r} is not canonical base64")
    return raw


def verify_certificate(cert: Certificate, key: VerifierKey, log: AuditLog, history: KeyHistory | None = None) -> list[str]:
    """Problems with one certificate (empty list: it verifies); see the module docstring.

    ``key`` is the pinned first coordinator key; ``history`` (default: replayed from ``log``) gives
    the key in force when the certificate was logged, which must have signed it and its receipt.
    """
    where = f"certificate {cert.path.name if cert.path else ''}".strip()
    problems = []
    history = history if history is not None else key_history(log.origin, log.entries(), key)
    receipt = cert.receipt if isinstance(cert.receipt, dict) else {}
    logged_at = receipt.get("index")
    signer = history.key_at(logged_at) if isinstance(logged_at, int) else history.current
    sig = cert.signature if isinstance(cert.signature, dict) else {}
    if sig.get("vkey") != signer.vkey:
        known = {k.vkey: i for i, k in history.coordinator}
        why = (f"a coordinator key that was not in force at entry {logged_at} (it was rotated out or not yet in)"
               if sig.get("vkey") in known else "no key of the pinned coordinator's key history")
        problems.append(f"{where}: signed by {str(sig.get('vkey'))[:60]!r}, {why}; expected {signer.vkey[:60]!r}")
    try:
        raw = _b64(sig.get("sig", ""))
    except binascii.Error:
        raw = b""
    if not signer.verify(raw, signed_message(cert.body)):
        problems.append(f"{where}: the Ed25519 signature does not verify: the certificate body or signature was altered")
    if cert.body.get("run") != log.origin:
        problems.append(f"{where}: issued for run {cert.body.get('run')!r}, not this log's {log.origin!r}")
    try:
        index = receipt["index"]
        proof = [_b64(p) for p in receipt["proof"]]
        note = receipt["checkpoint"]
        if not isinstance(index, int) or not 0 <= index < log.size:
            raise IntegrityError(f"index {index!r} is not an entry of the log (size {log.size})")
        entry = log.entries(index, index + 1)[0]
        size = receipt.get("tree_size")
        cp_key = history.key_at(size) if isinstance(size, int) else history.current
        cp = verify_entry_in_checkpoint(entry, index, proof, note, cp_key, cp_key.name)
        if cp.size != receipt.get("tree_size"):
            raise IntegrityError(f"tree size {receipt.get('tree_size')!r} differs from the signed checkpoint's {cp.size}")
        event = parse_canonical_json(entry)
        if event.get("type") != "certificate" or event.get("certificate") != cert.digest:
            raise IntegrityError(f"log entry {index} does not hold this certificate's hash {cert.digest[:16]}...")
    except (KeyError, TypeError, binascii.Error, FedUnlearnError) as exc:
        problems.append(f"{where}: receipt does not verify: {exc}")
    return problems


def _artifacts(run_dir: Path, log: AuditLog, report: RunVerification) -> None:
    from fedunlearn.certify.binding import binding_problems, stored_file_problems
    from fedunlearn.certify.compaction import check_compactions
    from fedunlearn.certify.runaudit import subject_function

    events = [e for e in (parse_canonical_json(x) for x in log.entries()) if isinstance(e, dict)]
    exports = [e for e in events if e.get("type") == "export"]
    latest = exports[-1] if exports else None
    if latest is None:
        report.checked.append("artifacts: no export event in the log (nothing exported yet)")
    else:
        for rel, want in sorted(latest.get("files", {}).items()):
            path = run_dir / rel
            if not path.is_file():
                report.problems.append(f"artifact {rel}: missing (the log records sha256 {want[:16]}...)")
            elif file_sha256(path) != want:
                report.problems.append(
                    f"artifact {rel}: sha256 {file_sha256(path)[:16]}... differs from the logged {want[:16]}...")
        report.checked.append(f"artifacts: {len(latest.get('files', {}))} exported files re-hashed")
    report.problems.extend(_copy_problems(events))
    if not (run_dir / "ledger.sqlite").exists():
        return
    from fedunlearn.ledger import Ledger

    try:  # blobs and compactions are checked whether or not anything was exported yet
        with Ledger.open(run_dir) as ledger:
            served = ledger.served()
            if latest is not None and (served is None or served["served_hash"] != latest.get("served_hash")):
                report.problems.append(
                    f"ledger: served hash {None if served is None else served['served_hash'][:16]} differs from the "
                    f"logged export's {str(latest.get('served_hash'))[:16]}"
                )
            report.problems.extend(f"ledger blob: {p}" for p in ledger.verify_blobs())
            report.problems.extend(f"ledger compaction: {p}" for p in check_compactions(ledger, events))
            bound, notes = binding_problems(run_dir, events, ledger, subject_function(run_dir))
            report.problems.extend(bound)
            report.problems.extend(stored_file_problems(run_dir, events, ledger))
            report.checked.extend(f"note: {n}" for n in notes)
            report.checked.append("ledger and run.json: lineage, statuses and settings compared with the log")
    except FedUnlearnError as exc:
        report.problems.append(f"ledger: cannot be read: {exc}")
    report.checked.append("ledger: " + ("served hash, " if latest is not None else "")
                          + "blobs re-hashed, compactions matched to signed events")


def _copy_problems(events: list[dict]) -> list[str]:
    """Every logged copy (``export-copy``) must copy what the log had exported just before it."""
    problems, served = [], None
    for index, event in enumerate(events):
        if event.get("type") == "export":
            served = event
        elif event.get("type") == "export-copy":
            want = {rel.removeprefix("export/served/"): h for rel, h in (served or {}).get("files", {}).items()
                    if rel.startswith("export/served/")}
            if served is None or event.get("served_hash") != served.get("served_hash") or event.get("files") != want:
                problems.append(f"export copy logged at entry {index} ({event.get('destination')}) does not copy the "
                                "export logged before it")
    return problems


def verify_export_copy(run_dir: str | Path, folder: str | Path, report: RunVerification) -> None:
    """Add to ``report`` whether ``folder`` holds exactly the served files of the run's last logged export.

    The log records the sha256 of every exported file; a copy of ``export/served`` (``fedunlearn
    export --out``, or one moved to a serving machine) is checked against those hashes, so anyone
    holding the copy and the signed log can tell it is the certified model.
    """
    run_dir, folder = Path(run_dir), Path(folder)
    if not folder.is_dir():
        report.problems.append(f"export copy {str(folder)!r}: not a folder")
        return
    with AuditLog.open(run_dir / AUDIT_FILE, origin=load_public_key(run_dir / PUBLIC_KEY_FILE).name,
                       create=False) as log:
        exports = [e for e in (parse_canonical_json(x) for x in log.entries())
                   if isinstance(e, dict) and e.get("type") == "export"]
        copies = [e for e in (parse_canonical_json(x) for x in log.entries())
                  if isinstance(e, dict) and e.get("type") == "export-copy"]
    if not exports:
        report.problems.append("export copy: the log records no export to compare it with")
        return
    served = {rel.removeprefix("export/served/"): want for rel, want in exports[-1].get("files", {}).items()
              if rel.startswith("export/served/")}
    have = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    hashes = {name: file_sha256(path) for name, path in have.items()}
    if hashes != served:  # which logged copy is it, if any: a stale copy must be named as one
        stale = [c for c in copies if c.get("files") == hashes and c.get("served_hash") != exports[-1].get("served_hash")]
        if stale:
            report.problems.append(
                f"export copy {str(folder)!r}: a stale copy: it is the served model {str(stale[-1].get('served_hash'))[:16]} "
                f"exported to {stale[-1].get('destination')}, which the run has since replaced (an erasure or more "
                f"training); the current served model is {str(exports[-1].get('served_hash'))[:16]}: copy it again "
                "with `fedunlearn export`")
    for name, want in sorted(served.items()):
        if name not in have:
            report.problems.append(f"export copy: {name} missing (the log records sha256 {want[:16]}...)")
        elif file_sha256(have[name]) != want:
            report.problems.append(f"export copy: {name} differs from the logged export (sha256 "
                                   f"{file_sha256(have[name])[:16]}... against {want[:16]}...)")
    for name in sorted(set(have) - set(served)):
        report.problems.append(f"export copy: {name} is not part of the logged export")
    report.checked.append(f"export copy {str(folder)!r}: {len(served)} files compared with the last logged export")


def verify_run(
    run_dir: str | Path, *, public_key: VerifierKey | str | Path | None = None,
    certificates: list[Path] | None = None,
) -> RunVerification:
    """Verify the audit log, certificates and exported artifacts of a run folder.

    Parameters
    ----------
    run_dir : str or Path
    public_key : VerifierKey, verifier-key string or file, optional
        The pinned coordinator key (default: ``RUN_DIR/audit.pub``).
    certificates : list of Path, optional
        Certificates to check (default: every ``RUN_DIR/certificates/*.json``).

    Raises
    ------
    RunStateError
        ``run_dir`` holds none of a run's files (what is damaged in a run is reported, not raised).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any((run_dir / n).exists() for n in ("run.json", PUBLIC_KEY_FILE, AUDIT_FILE)):
        raise RunStateError(
            f"{str(run_dir)!r} is not a fedunlearn run folder (no run.json, {PUBLIC_KEY_FILE} or audit log): pass the "
            "--out folder of `fedunlearn simulate` or `fedunlearn demo`"
        )
    report = RunVerification()
    try:
        if public_key is None:
            key = load_public_key(run_dir / PUBLIC_KEY_FILE)
        elif isinstance(public_key, VerifierKey):
            key = public_key
        elif isinstance(public_key, Path) or (isinstance(public_key, str) and Path(public_key).is_file()):
            key = load_public_key(Path(public_key))
        else:
            key = VerifierKey.parse(str(public_key))
        log = AuditLog.open(run_dir / AUDIT_FILE, origin=key.name, create=False)
    except FedUnlearnError as exc:
        report.problems.append(f"audit log: cannot be opened with the coordinator key: {exc}")
        return report
    if public_key is not None and (run_dir / PUBLIC_KEY_FILE).exists():  # the run's copy must be the pinned key
        try:
            if load_public_key(run_dir / PUBLIC_KEY_FILE).raw != key.raw:
                report.problems.append(f"{PUBLIC_KEY_FILE}: differs from the pinned coordinator key")
        except FedUnlearnError as exc:
            report.problems.append(f"{PUBLIC_KEY_FILE}: unreadable ({exc})")
    with log:
        paths = certificates if certificates is not None else sorted((run_dir / "certificates").glob("*.json"))
        certs = []
        for path in paths:
            try:
                certs.append(Certificate.read(path))
            except FedUnlearnError as exc:
                report.problems.append(f"certificate {Path(path).name}: {exc}")
        notes = [c.receipt["checkpoint"] for c in certs
                 if isinstance(c.receipt, dict) and isinstance(c.receipt.get("checkpoint"), str)]
        log_report = log.verify(key, known_checkpoints=notes)
        report.problems.extend(f"audit log: {p}" for p in log_report.problems)
        report.checked.append(f"audit log: {log_report.size} entries, {log_report.checkpoints} signed checkpoints "
                              f"(signed up to {log_report.signed_size})")
        if log_report.checkpoints == 0:
            report.problems.append("audit log: no signed checkpoint; nothing is covered by a signature")
        elif log_report.signed_size < log_report.size:
            report.problems.append(f"audit log: entries {log_report.signed_size}-{log_report.size - 1} are not covered "
                                   "by any signed checkpoint")
        history = log_report.keys if log_report.keys is not None else key_history(log.origin, log.entries(), key)
        if len(history.coordinator) > 1:
            report.checked.append(f"coordinator keys: {len(history.coordinator) - 1} attested rotation(s) from the "
                                  f"pinned key {key.key_id.hex()} to {history.current.key_id.hex()}")
        for cert in certs:
            problems = verify_certificate(cert, key, log, history)
            report.problems.extend(problems)
            if not problems:
                report.checked.append(f"certificate {cert.path.name if cert.path else ''}: signature and inclusion")
        _artifacts(run_dir, log, report)
    return report
