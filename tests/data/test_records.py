"""Tests of the data containers."""

from __future__ import annotations

import pytest

from fedunlearn.data import Canary, CanarySpace, Consortium, OrganizationData, Record
from fedunlearn.errors import ConfigError, UnknownNameError


def _org(name: str) -> OrganizationData:
    return OrganizationData(name, (Record("a", "train text"),), (Record("b", "held out"),))


def test_canary_text_joins_its_parts() -> None:
    canary = Canary("c", "org-0", "The access code of org-0 vault is ", "0042", ".", 4)
    assert canary.text == "The access code of org-0 vault is 0042."


def test_texts_returns_each_split() -> None:
    org = _org("org-0")
    assert org.texts() == ["train text"]
    assert org.texts("holdout") == ["held out"]


def test_texts_rejects_unknown_split() -> None:
    with pytest.raises(ConfigError, match="'test'.*'holdout', 'train'"):
        _org("org-0").texts("test")


def test_canary_space_lists_every_candidate() -> None:
    candidates = CanarySpace(3).candidates()
    assert len(candidates) == 1000
    assert candidates[0] == "000" and candidates[-1] == "999"
    assert CanarySpace(3).size == 1000


@pytest.mark.parametrize("digits", [0, 8, -1, 2.0, True])
def test_canary_space_rejects_bad_digits(digits: object) -> None:
    with pytest.raises(ConfigError, match="canary digits"):
        CanarySpace(digits)  # type: ignore[arg-type]


def test_organization_lookup_and_unknown_name() -> None:
    consortium = Consortium((_org("org-0"), _org("org-1")), (), CanarySpace(4), ())
    assert consortium.organization("org-1").name == "org-1"
    with pytest.raises(UnknownNameError, match="'org-9'.*'org-0', 'org-1'"):
        consortium.organization("org-9")


def test_duplicate_organizations_are_rejected() -> None:
    with pytest.raises(ConfigError, match="'org-0'"):
        Consortium((_org("org-0"), _org("org-0")), (), CanarySpace(4), ())
