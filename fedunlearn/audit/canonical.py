"""Canonical JSON (RFC 8785, JCS) for audit-log events and certificates.

Signed and hashed documents must serialise to exactly one byte string. RFC 8785 fixes key
order (UTF-16 code units), whitespace and string escaping; the ``rfc8785`` package implements
it. On top of that, fedunlearn admits no floating-point numbers at all: the text of a float
depends on the serialiser (``json.dumps(1e-5)`` is ``"1e-05"``, RFC 8785 gives ``"0.00001"``)
and a verifier in another language may parse it back to a different value. Numbers are
therefore ints, and decimals such as ε or δ travel as strings made by :func:`decimal_str`.
"""

from __future__ import annotations

import decimal
import json
import math
from collections.abc import Mapping
from typing import Any

import rfc8785

from fedunlearn.errors import ConfigError, IntegrityError

__all__ = ["canonical_json", "decimal_str", "parse_canonical_json"]

# RFC 8785 numbers are IEEE doubles: integers beyond 2**53 - 1 would silently lose precision.
_MAX_SAFE_INT = 2**53 - 1


def _normalise(obj: Any, path: str) -> Any:
    """Return a copy of ``obj`` made of dict/list/str/int/bool/None, or raise ConfigError."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        if not -_MAX_SAFE_INT <= obj <= _MAX_SAFE_INT:
            raise ConfigError(
                f"{path} is the integer {obj}, outside the ±(2**53 - 1) range JSON numbers hold "
                "exactly; encode it as a string, e.g. str(n)"
            )
        return int(obj)
    if isinstance(obj, (float, decimal.Decimal)):
        raise ConfigError(
            f"{path} is the {type(obj).__name__} {obj!r}; canonical JSON here takes ints and "
            "strings only, because float text is not portable between serialisers: encode "
            "decimals as strings, e.g. decimal_str(x) or str(Decimal)"
        )
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ConfigError(
                    f"{path} has the key {key!r} of type {type(key).__name__}; JSON object "
                    "keys must be strings: convert it with str()"
                )
            out[key] = _normalise(value, f"{path}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_normalise(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    raise ConfigError(
        f"{path} has the unsupported type {type(obj).__name__} ({obj!r:.60}); canonical JSON "
        "takes dict, list, str, int, bool and None: convert it first (bytes: base64 or hex)"
    )


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` as RFC 8785 canonical JSON bytes (UTF-8).

    Parameters
    ----------
    obj : Any
        A tree of mappings with string keys, lists/tuples, str, int, bool and None.

    Returns
    -------
    bytes
        The one canonical encoding: sorted keys, no whitespace, minimal escaping.

    Raises
    ------
    ConfigError
        If the tree holds a float or Decimal (encode decimals as strings: ``decimal_str``),
        an integer beyond ±(2**53 - 1), a non-string key, or any other type; the message
        names where, e.g. ``event['epsilon']``.
    """
    value = _normalise(obj, "value")
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:  # e.g. lone surrogates in a string
        raise ConfigError(f"value cannot be written as canonical JSON: {exc}; "
                          "strings must be valid Unicode") from exc


def parse_canonical_json(data: bytes) -> Any:
    """Parse bytes that must already be canonical JSON; return the decoded value.

    Raises
    ------
    IntegrityError
        If ``data`` is not UTF-8 JSON, holds a float, or is not byte-for-byte the canonical
        encoding of what it decodes to (so a stored entry cannot hide a second meaning).
    """
    try:
        value = json.loads(bytes(data).decode("utf-8"), parse_float=_reject_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(
            f"stored bytes {bytes(data)[:60]!r} are not valid canonical JSON ({exc}); "
            "the record was corrupted or written by another tool"
        ) from exc
    try:
        again = canonical_json(value)
    except ConfigError as exc:
        raise IntegrityError(f"stored JSON {bytes(data)[:60]!r} is not canonical: {exc}") from exc
    if again != bytes(data):
        raise IntegrityError(
            f"stored JSON {bytes(data)[:60]!r} is not in RFC 8785 canonical form "
            f"(expected {again[:60]!r}); it was altered or written by another tool"
        )
    return value


def _reject_float(text: str) -> Any:
    raise ValueError(f"the number {text} is a float; canonical entries hold ints and strings only")


def decimal_str(x: float | int, digits: int = 6) -> str:
    """Format a number as a plain decimal string with ``digits`` significant digits.

    The result never uses exponent notation and has no trailing zeros, so it reads the same
    in every language: ``decimal_str(1e-5) == "0.00001"``, ``decimal_str(3.14159265) ==
    "3.14159"``, ``decimal_str(1234567.0) == "1234570"``, ``decimal_str(-0.0) == "0"``.
    Rounding is half-to-even on the shortest repr of the float.

    Parameters
    ----------
    x : float or int
        A finite number.
    digits : int, default 6
        Significant digits to keep, 1 to 17 (17 round-trips every double).

    Raises
    ------
    ConfigError
        If ``x`` is NaN, infinite or not a number, or ``digits`` is outside 1..17.
    """
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 17:
        raise ConfigError(f"digits={digits!r}; expected an int from 1 to 17 significant digits")
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"decimal_str takes an int or float, got {type(x).__name__} {x!r:.40}")
    if isinstance(x, float) and not math.isfinite(x):
        raise ConfigError(
            f"{x!r} has no decimal form; a certificate cannot state an infinite or NaN bound: "
            "record it as a string such as 'inf' explicitly if that is what you mean"
        )
    value = decimal.Decimal(repr(x)) if isinstance(x, float) else decimal.Decimal(x)
    if value.is_zero():
        return "0"
    # The rounded coefficient has at most digits + 1 digits (999999.5 -> 1000000).
    ctx = decimal.Context(prec=digits + 2, rounding=decimal.ROUND_HALF_EVEN)
    quantum = decimal.Decimal(1).scaleb(value.adjusted() - digits + 1)
    rounded = value.quantize(quantum, context=ctx)
    text = format(rounded, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
