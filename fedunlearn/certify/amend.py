"""Add evaluation results to an issued erasure certificate by re-issuing it.

A certificate is signed and its hash is in the audit log, so it cannot be edited. The evaluation
suite runs after the erasure; its summary enters the record as a **re-issued** certificate: the
same body with ``evaluation`` filled in and ``supersedes`` naming the SHA-256 of the body it
replaces, signed by the coordinator key, logged as a new ``certificate`` event (with
``supersedes``) and given its own inclusion receipt. The earlier certificate stays valid and in
the log: nothing is rewritten, and ``fedunlearn verify`` checks both.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedunlearn.audit import canonical_json
from fedunlearn.certify.certificate import Certificate, _jsonable, signed_message
from fedunlearn.errors import RunStateError

__all__ = ["find_certificate", "reissue_with_evaluation"]


def find_certificate(run_dir: str | Path, served_hash: str) -> Certificate | None:
    """The newest certificate whose erasure produced ``served_hash`` (None if it was never certified)."""
    found: list[Certificate] = []
    for path in sorted((Path(run_dir) / "certificates").glob("*.json")):
        cert = Certificate.read(path)
        if cert.body.get("models", {}).get("after", {}).get("served") == served_hash:
            found.append(cert)
    superseded = {c.body.get("supersedes") for c in found}
    latest = [c for c in found if c.digest not in superseded]
    return latest[-1] if latest else None


def reissue_with_evaluation(run_dir: str | Path, cert: Certificate, evaluation: Mapping[str, Any]) -> Certificate:
    """Sign, log and write ``cert`` again with ``evaluation`` in its body; return the new certificate.

    Parameters
    ----------
    run_dir : path
        The run folder holding the audit log and the coordinator key (``RUN_DIR/secrets``).
    cert : Certificate
        The certificate to supersede (see :func:`find_certificate`).
    evaluation : mapping
        The evaluation summary (floats are written as decimal strings).

    Raises
    ------
    RunStateError
        If ``cert`` was issued for another run than this audit log's.
    """
    from fedunlearn.certify.runaudit import RunAudit

    with RunAudit.open(run_dir) as audit:
        if cert.body.get("run") != audit.origin:
            raise RunStateError(
                f"certificate {cert.path} was issued for run {cert.body.get('run')!r}, not {audit.origin!r}; "
                "re-issue it in the run folder it belongs to"
            )
        body = dict(cert.body)
        body["evaluation"] = _jsonable(dict(evaluation))
        body["supersedes"] = cert.digest
        signature = {"vkey": audit.verifier.vkey,
                     "sig": base64.b64encode(audit.signer.sign(signed_message(body))).decode("ascii")}
        digest = hashlib.sha256(canonical_json(body)).hexdigest()
        index = audit.append({"type": "certificate", "certificate": digest, "subjects": body.get("subjects", []),
                              "guarantee": body.get("guarantee", {}).get("kind"), "supersedes": cert.digest})
        note = audit.checkpoint()
        size = audit.log.size
        receipt = {"index": index, "tree_size": size, "checkpoint": note,
                   "proof": [base64.b64encode(h).decode("ascii") for h in audit.log.inclusion_proof(index, size)]}
    new = Certificate(body, signature, receipt)
    path = Path(run_dir) / "certificates" / f"{index:06d}-{digest[:16]}.json"
    path.write_bytes(new.to_bytes() + b"\n")
    return Certificate(body, signature, receipt, path)
