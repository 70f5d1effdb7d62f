"""Signed erasure requests and their authorization.

A request names the run (the audit log's origin), the subjects (organization names), the method
and a random nonce, and is signed with Ed25519 over::

    b"fedunlearn erasure request v1\\n" || canonical_json(request)

It is authorized only when the signature verifies and the signer is either the coordinator (its
key in force: ``RUN_DIR/audit.pub`` until the first rotation) or the organization being erased,
with its key in force (its ``enrolment`` event, then its attested ``key-rotation`` events; an
organization may ask only for its own erasure). A rotated-out key is refused. Anything
else is refused, and the refusal is logged (a ``refusal`` event, keyed hashes only) and signed.
A request whose signed content was already logged is a replay and is refused too: the replay key
is the SHA-256 of the signed message, so re-encoding the same signature (base64 padding bits) or
re-serializing the same request does not make a new one. Signatures must be canonical base64 of
exactly 64 bytes.

``issued`` (UTC, ``YYYY-MM-DDTHH:MM:SSZ``) is required and must fall inside the window
``[run created - ISSUED_SKEW, now + ISSUED_SKEW]`` and be at most :data:`REQUEST_MAX_AGE` old: a
request cannot predate the run it names, cannot come from the future beyond clock skew, and a
stale request (older than the one-month answer period of GDPR Art. 12(3)) must be signed anew.

The request file itself holds organization names and stays with the coordinator; the log gets
its SHA-256, the signer's role and key ID, and the subjects' keyed hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fedunlearn.audit import SigningKey, VerifierKey, canonical_json
from fedunlearn.errors import AuthorizationError, ConfigError, IntegrityError

__all__ = ["ISSUED_SKEW", "REQUEST_FORMAT", "REQUEST_MAX_AGE", "Authorization", "SignedRequest", "authorize_request",
           "log_refusal", "sign_request"]

REQUEST_FORMAT = "fedunlearn-erasure-request/1"
_DOMAIN = b"fedunlearn erasure request v1\n"
#: Clock skew tolerated between the signer and the coordinator.
ISSUED_SKEW = timedelta(minutes=5)
#: Oldest request accepted (GDPR Art. 12(3): a request is answered within one month).
REQUEST_MAX_AGE = timedelta(days=31)
#: When an authorized request must be answered, counted from its receipt (logged as its deadline).
ANSWER_WITHIN = timedelta(days=30)
_ISSUED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class SignedRequest:
    """An erasure request with its signer's verifier key and Ed25519 signature (base64)."""

    request: dict[str, Any]
    signer: str
    signature: str

    @property
    def digest(self) -> str:
        """SHA-256 hex of the canonical signed request (its identity in the audit log)."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()

    @property
    def content_digest(self) -> str:
        """SHA-256 hex of the signed message: what the signature covers (the replay key)."""
        return hashlib.sha256(_DOMAIN + canonical_json(self.request)).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request, "signer": self.signer, "signature": self.signature}

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.to_json() + b"\n")
        return path

    @classmethod
    def parse(cls, data: str | bytes | Mapping[str, Any] | SignedRequest) -> SignedRequest:
        """Read a signed request (its JSON text, a mapping, or a path's bytes)."""
        if isinstance(data, SignedRequest):
            return data
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"erasure request is not JSON: {exc}") from exc
        if not isinstance(data, Mapping) or set(data) != {"request", "signer", "signature"}:
            raise ConfigError(
                "erasure request must be an object with exactly 'request', 'signer' and 'signature'; "
                "make one with `fedunlearn keys sign-request`"
            )
        if not isinstance(data["request"], Mapping) or not all(isinstance(data[k], str) for k in ("signer", "signature")):
            raise ConfigError("erasure request: 'request' must be an object, 'signer' and 'signature' strings")
        return cls(dict(data["request"]), data["signer"], data["signature"])

    @classmethod
    def read(cls, path: str | Path) -> SignedRequest:
        try:
            return cls.parse(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read erasure request {str(path)!r}: {exc}") from exc


def sign_request(
    key: SigningKey,
    *,
    run: str,
    subjects: Sequence[str],
    method: str = "sisa",
    records: Sequence[str] = (),
    nonce: str | None = None,
    issued: str | None = None,
) -> SignedRequest:
    """Sign an erasure request for ``subjects`` of the run whose audit origin is ``run``.

    ``run`` is the name in ``RUN_DIR/audit.pub`` (``fedunlearn keys sign-request`` reads it);
    ``issued`` defaults to now (UTC, ``YYYY-MM-DDTHH:MM:SSZ``).
    """
    if isinstance(subjects, str) or not subjects or not all(isinstance(s, str) and s for s in subjects):
        raise ConfigError(f"subjects {subjects!r}: expected a non-empty list of organization names")
    request = {
        "format": REQUEST_FORMAT, "run": run, "subjects": sorted(set(subjects)), "method": str(method).lower(),
        "records": list(records), "nonce": nonce or secrets.token_hex(16),
        "issued": issued if issued is not None else datetime.now(timezone.utc).strftime(_ISSUED_FORMAT),
    }
    signature = key.sign(_DOMAIN + canonical_json(request))
    return SignedRequest(request, key.verifier.vkey, base64.b64encode(signature).decode("ascii"))


@dataclass(frozen=True)
class Authorization:
    """An authorized request, as logged.

    Attributes
    ----------
    request : SignedRequest
    subjects : tuple of str
        Organization names (sorted).
    method : str
    records : tuple of str
    signer_role : str
        ``"subject"`` or ``"coordinator"``.
    key_id : str
        Hex C2SP key ID of the signer.
    log_index : int
        Index of the ``erasure-request`` event.
    """

    request: SignedRequest
    subjects: tuple[str, ...]
    method: str
    records: tuple[str, ...]
    signer_role: str
    key_id: str
    log_index: int



def log_refusal(audit: Any, signed: SignedRequest | None, subjects: Sequence[str], reason: str) -> None:
    """Append a signed ``refusal`` event for an erasure request (keyed subject hashes only)."""
    event: dict[str, Any] = {"type": "refusal", "what": "erasure-request", "reason": reason,
                             "subjects": sorted(audit.subject(str(s)) for s in subjects)}
    if signed is not None:
        event["request"] = signed.digest
    audit.append(event)
    audit.checkpoint()


def _refuse(audit: Any, signed: SignedRequest | None, subjects: Sequence[str], reason: str) -> AuthorizationError:
    log_refusal(audit, signed, subjects, reason)
    return AuthorizationError(f"erasure request refused (logged): {reason}")


def _created(audit: Any) -> datetime | None:
    entries = audit.log.entries(0, 1)
    if not entries:
        return None
    stamp = str(json.loads(entries[0]).get("time", ""))
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def _issued_problem(issued: object, audit: Any, now: datetime) -> str | None:
    """Why ``issued`` is unacceptable (see the module doc), or ``None``."""
    if issued is None:
        return "the request has no 'issued' time; sign a new one with `fedunlearn keys sign-request`"
    try:
        when = datetime.strptime(str(issued), _ISSUED_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return f"'issued' {str(issued)!r:.40} is not a UTC time like 2026-01-31T12:00:00Z"
    if when > now + ISSUED_SKEW:
        return f"'issued' {issued} lies in the future (now {now.strftime(_ISSUED_FORMAT)}); check the signer's clock"
    if now - when > REQUEST_MAX_AGE:
        return (f"'issued' {issued} is more than {REQUEST_MAX_AGE.days} days old; "
                "requests expire, sign a new one")
    created = _created(audit)
    if created is not None and when < created - ISSUED_SKEW:
        return (f"'issued' {issued} predates the run (created {created.strftime(_ISSUED_FORMAT)}); "
                "a request names a run that exists: sign a new one")
    return None


def authorize_request(audit: Any, request: SignedRequest | Mapping[str, Any] | str | bytes) -> Authorization:
    """Check a signed erasure request against the run's audit log; log the outcome.

    Parameters
    ----------
    audit : RunAudit
        The run's open audit log (:class:`fedunlearn.certify.RunAudit`).
    request : SignedRequest, mapping or JSON text
        The signed request (see :func:`sign_request`).

    Returns
    -------
    Authorization
        After an ``erasure-request`` event and a signed checkpoint were added to the log.

    Raises
    ------
    AuthorizationError
        When the request is malformed, for another run, badly signed, signed by neither the
        coordinator nor the subject's enrolled key, names an organization that never enrolled,
        or was already used; a ``refusal`` event is logged and signed first.
    """
    try:
        signed = SignedRequest.parse(request)
    except ConfigError as exc:
        raise _refuse(audit, None, [], f"malformed request: {exc}") from exc
    body = signed.request
    subjects = body.get("subjects")
    if body.get("format") != REQUEST_FORMAT or not isinstance(subjects, list) or not subjects \
            or not all(isinstance(s, str) and s for s in subjects):
        raise _refuse(audit, signed, [], f"not a {REQUEST_FORMAT} request with a list of subjects")
    if body.get("run") != audit.origin:
        raise _refuse(audit, signed, subjects, f"request is for run {body.get('run')!r:.80}, not this run "
                      f"{audit.origin!r}; sign it with the origin in RUN_DIR/audit.pub")
    problem = _issued_problem(body.get("issued"), audit, datetime.now(timezone.utc))
    if problem:
        raise _refuse(audit, signed, subjects, problem)
    try:
        signer = VerifierKey.parse(signed.signer)
        sig = base64.b64decode(signed.signature, validate=True)
        message = _DOMAIN + canonical_json(body)
    except (ConfigError, IntegrityError, binascii.Error) as exc:
        raise _refuse(audit, signed, subjects, f"unreadable signer key or signature: {exc}") from exc
    if len(sig) != 64 or base64.b64encode(sig).decode("ascii") != signed.signature:
        raise _refuse(audit, signed, subjects, "the signature is not the canonical base64 of a 64-byte Ed25519 "
                      "signature (padding bits or length altered)")
    if not signer.verify(sig, message):
        raise _refuse(audit, signed, subjects, "the signature does not verify under the signer key it names; "
                      "the request was altered or signed with another key")
    unknown = [s for s in subjects if not audit.is_enrolled(s)]
    if unknown:
        raise _refuse(audit, signed, subjects, f"{len(unknown)} subject(s) never enrolled in this run "
                      f"({', '.join(audit.subject(s)[:16] for s in unknown)})")
    if signer.raw == audit.verifier.raw:
        role = "coordinator"
    else:
        history = audit.key_history()
        if any(signer.raw == key.raw for _, key in history.coordinator):
            raise _refuse(audit, signed, subjects, f"signer key {signer.key_id.hex()} is a rotated-out coordinator "
                          "key; sign with the coordinator's current key")
        if any(history.rotated_out(audit.subject(s), signer.raw) and history.org_key(audit.subject(s)) != signer.raw
               for s in subjects):
            raise _refuse(audit, signed, subjects, f"signer key {signer.key_id.hex()} was rotated out by the "
                          "organization; sign with its current key")
        enrolled = [audit.enrolled_key(s) for s in subjects]
        if not all(k is not None and k.raw == signer.raw for k in enrolled):
            raise _refuse(audit, signed, subjects, f"signer key {signer.key_id.hex()} is neither the coordinator's "
                          "nor the enrolled key of every subject; an organization may only ask for its own "
                          "erasure, with the key it enrolled")
        role = "subject"
    content = signed.content_digest
    if any(e.get("content") == content or e.get("request") == signed.digest
           for _, e in audit.events("erasure-request")):
        raise _refuse(audit, signed, subjects, f"request {content[:16]} was already used (replay); sign a new one")
    received = datetime.now(timezone.utc)
    index = audit.append({
        "type": "erasure-request", "request": signed.digest, "content": content,
        # the answer is due within one month of receipt (GDPR Art. 12(3))
        "deadline": (received + ANSWER_WITHIN).strftime(_ISSUED_FORMAT),
        "subjects": sorted(audit.subject(s) for s in subjects),
        "method": str(body.get("method", "")), "records": len(body.get("records") or []), "signer": role,
        "key_id": signer.key_id.hex(),
    })
    audit.checkpoint()
    return Authorization(request=signed, subjects=tuple(sorted(subjects)), method=str(body.get("method", "sisa")),
                         records=tuple(body.get("records") or ()), signer_role=role, key_id=signer.key_id.hex(),
                         log_index=index)
