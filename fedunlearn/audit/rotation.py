"""Key rotation: each new signing key enters the log in a ``key-rotation`` event attested by the old one.

Two kinds of key rotate:

``coordinator``   the log's checkpoint and certificate signing key. The run's first key (the one
                  auditors pin out of band, ``RUN_DIR/audit.pub``) is the root of trust; every later
                  key is valid only through an unbroken chain of rotations, each signed by its
                  predecessor. A checkpoint of tree size ``s`` must be signed by the key in force
                  for the first ``s`` entries: the root key, changed by every accepted rotation
                  event at an index below ``s`` (so the checkpoint that first covers a rotation is
                  already signed by the new key). All coordinator keys carry the log origin as
                  their C2SP key name; their key IDs differ.
``organization``  an organization's enrolled request key (first logged in its ``enrolment``
                  event). After a rotation only the new key may sign its erasure requests.

The attestation is an Ed25519 signature by the old key over::

    b"fedunlearn key rotation v1\\n" || canonical_json({"origin", "role", "old", "new"})

with ``old`` and ``new`` the base64 of the raw 32-byte public keys. It names no organization, so an
organization can sign it offline (:func:`attest_rotation`) without knowing its keyed hash, and
an auditor can check it from the log alone. Replaying a rotation elsewhere is useless: it is only
accepted while ``old`` is the key in force.

:class:`KeyHistory` replays a log's enrolment and rotation events and says which key was in
force when; rotations that do not verify are reported and ignored (the chain stays on the old key).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedunlearn.audit.canonical import canonical_json
from fedunlearn.audit.keys import SigningKey, VerifierKey
from fedunlearn.errors import ConfigError

__all__ = ["ROLES", "KeyHistory", "attest_rotation", "rotation_event", "rotation_message", "verify_rotation"]

ROLES = ("coordinator", "organization")
_DOMAIN = b"fedunlearn key rotation v1\n"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _raw(text: object) -> bytes | None:
    """32 raw key bytes from canonical base64, else None."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 and _b64(raw) == text else None


def rotation_message(origin: str, role: str, old: bytes, new: bytes) -> bytes:
    """The bytes an attestation signs (``old``/``new``: raw 32-byte Ed25519 public keys)."""
    if role not in ROLES:
        raise ConfigError(f"key rotation role {role!r}: expected one of {', '.join(ROLES)}")
    return _DOMAIN + canonical_json({"origin": origin, "role": role, "old": _b64(old), "new": _b64(new)})


def attest_rotation(old: SigningKey, new: VerifierKey, *, origin: str, role: str) -> dict[str, str]:
    """The statement ``{"role", "old", "new", "attestation"}`` by which ``old`` hands over to ``new``.

    Parameters
    ----------
    old : SigningKey
        The key in force (its private half signs).
    new : VerifierKey
        The key that takes over.
    origin : str
        The run's audit origin (the name in ``RUN_DIR/audit.pub``).
    role : {"coordinator", "organization"}
    """
    if not isinstance(old, SigningKey) or not isinstance(new, VerifierKey):
        raise ConfigError("attest_rotation needs the old SigningKey and the new VerifierKey")
    if old.verifier.raw == new.raw:
        raise ConfigError("the new key equals the old one; generate a fresh key to rotate to")
    message = rotation_message(origin, role, old.verifier.raw, new.raw)
    return {"role": role, "old": _b64(old.verifier.raw), "new": _b64(new.raw),
            "attestation": _b64(old.sign(message))}


def rotation_event(statement: Mapping[str, str], *, org: str | None = None) -> dict[str, Any]:
    """The ``key-rotation`` audit event of a statement (``org``: the keyed hash, organizations only)."""
    event: dict[str, Any] = {"type": "key-rotation", **{k: statement[k] for k in ("role", "old", "new", "attestation")}}
    if org is not None:
        event["org"] = org
    return event


def verify_rotation(statement: Mapping[str, Any], origin: str, current: bytes) -> str | None:
    """None if ``statement`` hands over from ``current`` (raw key) with a valid attestation, else why not."""
    role, old, new = statement.get("role"), _raw(statement.get("old")), _raw(statement.get("new"))
    if role not in ROLES or old is None or new is None:
        return "not a rotation with a role and base64 raw 'old' and 'new' keys"
    if old != current:
        return (f"its old key {old.hex()[:16]}... is not the key in force ({current.hex()[:16]}...); "
                "only the current key can hand over")
    if new == old:
        return "the new key equals the old one"
    try:
        signature = base64.b64decode(str(statement.get("attestation", "")), validate=True)
        Ed25519PublicKey.from_public_bytes(old).verify(signature, rotation_message(origin, str(role), old, new))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):  # all mean "not attested"
        return "its attestation is not a valid signature of the previous key over the rotation"
    return None


@dataclass
class KeyHistory:
    """Which coordinator and organization keys were in force when, replayed from a log's events.

    Attributes
    ----------
    root : VerifierKey
        The pinned first coordinator key.
    coordinator : list of (index, VerifierKey)
        ``(-1, root)`` then one item per accepted coordinator rotation at log index ``index``.
    organizations : dict
        Keyed hash -> list of (index, raw key) of its enrolment and accepted rotations.
    problems : list of str
        One line per rotation or enrolment that was not accepted.
    """

    root: VerifierKey
    coordinator: list[tuple[int, VerifierKey]] = field(default_factory=list)
    organizations: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def replay(cls, root: VerifierKey, origin: str, events: Iterable[tuple[int, Mapping[str, Any]]]) -> KeyHistory:
        """Follow the enrolment and ``key-rotation`` events (index, parsed event) in log order."""
        history = cls(root=root, coordinator=[(-1, root)])
        for index, event in events:
            kind = event.get("type") if isinstance(event, Mapping) else None
            if kind == "enrolment" and event.get("key") is not None:
                who, raw = event.get("org"), _raw(event.get("key"))
                keys = history.organizations.setdefault(str(who), [])
                if raw is None:
                    history.problems.append(f"entry {index}: enrolment holds a malformed key")
                elif not keys:
                    keys.append((index, raw))
                elif keys[-1][1] != raw:
                    history.problems.append(
                        f"entry {index}: enrolment replaces organization {str(who)[:16]}'s key without an "
                        "attested key-rotation; the new key is ignored")
            elif kind == "key-rotation":
                history._rotate(index, event, origin)
        return history

    def _rotate(self, index: int, event: Mapping[str, Any], origin: str) -> None:
        role = event.get("role")
        if role == "coordinator":
            why = verify_rotation(event, origin, self.coordinator[-1][1].raw)
            if why is None:
                new = VerifierKey(self.root.name, Ed25519PublicKey.from_public_bytes(_raw(event["new"])))
                self.coordinator.append((index, new))
                return
        elif role == "organization":
            keys = self.organizations.get(str(event.get("org")), [])
            why = ("the organization has no enrolled key to rotate" if not keys
                   else verify_rotation(event, origin, keys[-1][1]))
            if why is None:
                keys.append((index, _raw(event["new"])))
                return
        else:
            why = f"role {role!r} is not one of {', '.join(ROLES)}"
        self.problems.append(f"entry {index}: key rotation rejected: {why}")

    def key_at(self, size: int) -> VerifierKey:
        """The coordinator key in force for a tree of ``size`` entries (rotations at index < size)."""
        return [key for index, key in self.coordinator if index < size][-1]

    @property
    def current(self) -> VerifierKey:
        """The coordinator key in force now."""
        return self.coordinator[-1][1]

    def org_key(self, subject: str) -> bytes | None:
        """The raw key an organization (by keyed hash) may sign with now, or None."""
        keys = self.organizations.get(subject)
        return keys[-1][1] if keys else None

    def rotated_out(self, subject: str, raw: bytes) -> bool:
        """Whether ``raw`` is a former, no longer valid key of the organization."""
        keys = self.organizations.get(subject, [])
        return any(k == raw for _, k in keys[:-1])
