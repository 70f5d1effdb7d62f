"""Guard the public API of fedunlearn.data."""

from __future__ import annotations

import fedunlearn.data as data

EXPECTED = {
    "STYLES",
    "Canary",
    "CanarySpace",
    "Consortium",
    "OrganizationData",
    "Record",
    "default_organization_names",
    "generate_consortium",
    "load_consortium",
    "load_organization",
    "load_user_organization",
    "public_corpus",
    "save_consortium",
}


def _isort_key(name: str) -> tuple[int, str]:
    # Constants, then classes, then functions (ruff RUF022 order).
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def test_public_api_is_exactly_the_expected_names() -> None:
    assert set(data.__all__) == EXPECTED
    for name in data.__all__:
        assert getattr(data, name) is not None


def test_all_is_sorted() -> None:
    assert data.__all__ == sorted(data.__all__, key=_isort_key)
