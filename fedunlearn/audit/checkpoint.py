"""Signed checkpoints: C2SP signed notes (c2sp.org/signed-note) over tlog checkpoint bodies.

A checkpoint (c2sp.org/tlog-checkpoint) commits a log to its tree at one size::

    fedunlearn.example/run-42                 origin
    17                                        tree size, ASCII decimal, no leading zeros
    5dnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=    base64 root hash (32 bytes)

    — fedunlearn.example/run-42 AbCdEf...     em dash, space, key name, space,
                                              base64(4-byte key ID || 64-byte Ed25519 sig)

The signature covers the body including its final newline, not the blank line. Verification
follows the spec: signature lines from unknown keys (other name or key ID) are ignored, a
line from the known key MUST verify or the whole note is rejected, and at least one must
verify. fedunlearn writes no extension lines and rejects checkpoints that have them.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedunlearn.audit.keys import SigningKey, VerifierKey, as_verifier, check_key_name
from fedunlearn.errors import ConfigError, IntegrityError

__all__ = [
    "MAX_SIGNATURES",
    "Checkpoint",
    "parse_and_verify_checkpoint",
    "parse_checkpoint_body",
    "sign_checkpoint",
    "sign_note",
    "verify_note",
]

MAX_SIGNATURES = 100
"""Most signature lines a note may carry (the spec requires accepting at least 16)."""

_SIG_PREFIX = "\u2014 "  # em dash U+2014, then a space
_SIZE_RE = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _strict_b64(text: str, what: str) -> bytes:
    """Decode standard base64, refusing anything but the one canonical encoding."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise IntegrityError(f"{what} {text!r:.100} is not valid base64: {exc}") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise IntegrityError(f"{what} {text!r:.100} is not canonical base64 (altered padding bits)")
    return raw


@dataclass(frozen=True)
class Checkpoint:
    """The tree head a signed checkpoint commits to.

    Attributes
    ----------
    origin : str
        Identity of the log, e.g. ``fedunlearn.example/run-42``.
    size : int
        Number of entries in the tree.
    root : bytes
        RFC 6962 root hash (32 bytes) of the first ``size`` entries.
    """

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or _CONTROL_RE.search(self.origin):
            raise ConfigError(f"checkpoint origin {self.origin!r} must be a non-empty line of text")
        if "\n" in self.origin:
            raise ConfigError(f"checkpoint origin {self.origin!r} must not contain a newline")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ConfigError(f"checkpoint size {self.size!r} must be an int >= 0")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise ConfigError(f"checkpoint root {self.root!r:.60} must be 32 raw bytes")

    def body(self) -> str:
        """The note text ``origin\\nsize\\nbase64(root)\\n``."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"


def sign_note(text: str, key: SigningKey) -> str:
    """Sign ``text`` (non-empty, newline-terminated, no blank lines) as a C2SP note."""
    if not isinstance(key, SigningKey):
        raise ConfigError(f"key is a {type(key).__name__}; expected a SigningKey")
    if not isinstance(text, str) or not text.endswith("\n") or text == "\n":
        raise ConfigError(f"note text {text!r:.80} must be non-empty and end with a newline")
    if "\n\n" in text or _CONTROL_RE.search(text):
        raise ConfigError(
            f"note text {text!r:.80} has a blank line or a control character; the blank line "
            "separates signatures, so the text may contain neither"
        )
    signature = key.key_id + key.sign(text.encode("utf-8"))
    return f"{text}\n{_SIG_PREFIX}{key.name} {base64.b64encode(signature).decode('ascii')}\n"


def verify_note(
    note: str | bytes, public_key: VerifierKey | Ed25519PublicKey | bytes | str, name: str
) -> str:
    """Verify a C2SP signed note against one known key and return its text.

    Parameters
    ----------
    note : str or bytes
        The whole signed note (UTF-8 if bytes).
    public_key : VerifierKey, Ed25519PublicKey, bytes or str
        The trusted key (see :func:`~fedunlearn.audit.keys.as_verifier`).
    name : str
        The key name the trusted key signs under.

    Returns
    -------
    str
        The verified note text, including its final newline.

    Raises
    ------
    IntegrityError
        If the note is malformed, a signature line of the known key fails to verify, or no
        line of the known key is present.
    """
    verifier = as_verifier(public_key, name)
    if isinstance(note, (bytes, bytearray)):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IntegrityError(f"signed note is not valid UTF-8: {exc}") from exc
    if not isinstance(note, str):
        raise IntegrityError(f"signed note is a {type(note).__name__}; expected text")
    if _CONTROL_RE.search(note):
        raise IntegrityError(f"signed note {note!r:.100} holds a control character")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise IntegrityError(
            f"signed note {note!r:.100} has no blank line before its signatures or does not "
            "end with a newline"
        )
    text, sig_block = note[: split + 1], note[split + 2 :]
    lines = sig_block[:-1].split("\n") if sig_block else []
    if not lines or len(lines) > MAX_SIGNATURES:
        raise IntegrityError(
            f"signed note has {len(lines)} signature lines; expected 1 to {MAX_SIGNATURES}"
        )
    verified = False
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise IntegrityError(f"signature line {line!r:.100} does not start with '— '")
        parts = line[len(_SIG_PREFIX) :].split(" ")
        if len(parts) != 2 or not parts[0]:
            raise IntegrityError(f"signature line {line!r:.100} is not '— <name> <base64>'")
        sig_name, sig_b64 = parts
        raw = _strict_b64(sig_b64, "signature")
        if len(raw) < 5:
            raise IntegrityError(f"signature {sig_b64!r} is shorter than a key ID plus signature")
        if sig_name != verifier.name or raw[:4] != verifier.key_id:
            continue  # unknown key: the spec says ignore it
        if len(raw) != 4 + 64 or not verifier.verify(raw[4:], text.encode("utf-8")):
            raise IntegrityError(
                f"the signature of key {verifier.name!r} (ID {verifier.key_id.hex()}) does not "
                "verify: the note text or signature was altered, or it was signed by another key"
            )
        verified = True
    if not verified:
        seen = ", ".join(repr(line.split(" ")[1]) for line in lines)
        raise IntegrityError(
            f"no signature from key {verifier.name!r} (ID {verifier.key_id.hex()}) in the note; "
            f"signers present: {seen}; check that you hold the right public key and name"
        )
    return text


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse checkpoint note text (three lines: origin, size, base64 root) strictly."""
    lines = text.split("\n") if isinstance(text, str) else []
    if len(lines) != 4 or lines[3] != "":
        raise IntegrityError(
            f"checkpoint text {text!r:.120} is not exactly 'origin\\nsize\\nroot\\n' "
            "(fedunlearn writes no extension lines)"
        )
    origin, size_text, root_text = lines[:3]
    if not origin:
        raise IntegrityError("checkpoint origin line is empty")
    if not _SIZE_RE.match(size_text):
        raise IntegrityError(
            f"checkpoint size {size_text!r} is not an ASCII decimal without leading zeros"
        )
    root = _strict_b64(root_text, "checkpoint root")
    if len(root) != 32:
        raise IntegrityError(f"checkpoint root {root_text!r} decodes to {len(root)} bytes, not 32")
    return Checkpoint(origin, int(size_text), root)


def sign_checkpoint(origin: str, size: int, root: bytes, key: SigningKey) -> str:
    """Return the signed note of the checkpoint ``(origin, size, root)``.

    Parameters
    ----------
    origin : str
        Log identity; a C2SP key name style string (no spaces, no ``+``), by convention
        the same as ``key.name``.
    size : int
        Tree size.
    root : bytes
        The 32-byte root hash of the first ``size`` entries.
    key : SigningKey
        The log's signing key.
    """
    check_key_name(origin)
    return sign_note(Checkpoint(origin, size, root).body(), key)


def parse_and_verify_checkpoint(
    note: str | bytes, public_key: VerifierKey | Ed25519PublicKey | bytes | str, name: str
) -> Checkpoint:
    """Verify a signed checkpoint note and return the tree head it commits to.

    Raises
    ------
    IntegrityError
        On any malformed note or body, or a missing or failing signature of ``name``.
    """
    return parse_checkpoint_body(verify_note(note, public_key, name))
