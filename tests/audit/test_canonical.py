"""Canonical JSON (RFC 8785) without floats, and decimal strings."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedunlearn.audit.canonical import canonical_json, decimal_str, parse_canonical_json
from fedunlearn.errors import ConfigError, IntegrityError


def test_keys_sorted_no_whitespace_utf8() -> None:
    assert canonical_json({"b": [1, "x", None, True], "a": {"é": "\u2028"}}) == (
        '{"a":{"é":"\u2028"},"b":[1,"x",null,true]}'.encode()
    )


def test_keys_sort_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB01 by UTF-16 units,
    # although it is the larger code point.
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'.encode()


def test_tuples_and_mappings_are_accepted() -> None:
    from types import MappingProxyType

    assert canonical_json(MappingProxyType({"a": (1, 2)})) == b'{"a":[1,2]}'


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (0.5, "value"),
        ({"epsilon": 1e-5}, "value['epsilon']"),
        ({"a": [1, {"b": 2.0}]}, "value['a'][1]['b']"),
        ({"d": Decimal("0.1")}, "value['d']"),
        (float("nan"), "value"),
    ],
)
def test_floats_are_rejected_with_their_location_and_the_fix(value: object, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        canonical_json(value)
    message = str(info.value)
    assert where in message
    assert "strings" in message and "decimal_str" in message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({1: "a"}, "keys must be strings"),
        (b"raw", "unsupported type bytes"),
        ({"s": {1, 2}}, "unsupported type set"),
        (2**53, "2**53"),
        ("\ud800", "valid Unicode"),
    ],
)
def test_other_unrepresentable_values_are_rejected(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("*", r"\*")):
        canonical_json(value)


def test_parse_accepts_only_the_canonical_form() -> None:
    assert parse_canonical_json(b'{"a":1,"b":"x"}') == {"a": 1, "b": "x"}
    for bad in (b'{"b":"x","a":1}', b'{"a": 1}', b'{"a":1.5}', b"\xff", b"{", b'{"a":1e2}'):
        with pytest.raises(IntegrityError):
            parse_canonical_json(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(value=json_values)
def test_property_roundtrip_and_idempotence(value: object) -> None:
    data = canonical_json(value)
    assert json.loads(data) == value
    assert parse_canonical_json(data) == value
    assert canonical_json(json.loads(data)) == data


@settings(max_examples=50, deadline=None)
@given(items=st.dictionaries(st.text(max_size=6), st.integers(0, 9), max_size=8))
def test_property_key_order_does_not_matter(items: dict[str, int]) -> None:
    reversed_items = dict(reversed(list(items.items())))
    assert canonical_json(items) == canonical_json(reversed_items)


@pytest.mark.parametrize(
    ("x", "digits", "want"),
    [
        (1e-5, 6, "0.00001"),
        (3.14159265, 6, "3.14159"),
        (1234567.0, 6, "1234570"),
        (-0.0, 6, "0"),
        (0.0, 6, "0"),
        (0.1 + 0.2, 6, "0.3"),
        (2.5, 1, "2"),  # half to even
        (3.5, 1, "4"),
        (-1.5e-7, 6, "-0.00000015"),
        (7, 6, "7"),
        (0.30000000000000004, 17, "0.30000000000000004"),
        (1e21, 3, "1000000000000000000000"),
    ],
)
def test_decimal_str(x: float, digits: int, want: str) -> None:
    assert decimal_str(x, digits) == want


@pytest.mark.parametrize(
    ("x", "digits"),
    [(float("inf"), 6), (float("nan"), 6), ("1.0", 6), (True, 6), (1.0, 0), (1.0, 18), (1.0, 2.0)],
)
def test_decimal_str_rejects_bad_input(x: object, digits: object) -> None:
    with pytest.raises(ConfigError):
        decimal_str(x, digits)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False), digits=st.integers(1, 17))
def test_property_decimal_str_is_plain_and_close(x: float, digits: int) -> None:
    text = decimal_str(x, digits)
    assert "e" not in text.lower() and text != "-0"
    assert not ("." in text and text.endswith("0"))
    if x != 0:
        exact = Decimal(repr(x))
        assert abs(Decimal(text) - exact) <= abs(exact) * Decimal(10) ** (1 - digits)
    assert decimal_str(x, 17) == decimal_str(float(decimal_str(x, 17)), 17)  # 17 digits round-trip
