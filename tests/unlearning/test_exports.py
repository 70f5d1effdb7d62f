"""The public API of the erasure modules: sorted ``__all__``, every name present."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "fedunlearn.registry", "fedunlearn.unlearning", "fedunlearn.unlearning.base", "fedunlearn.unlearning.cost",
    "fedunlearn.unlearning.drop", "fedunlearn.unlearning.replay", "fedunlearn.unlearning.retrain",
    "fedunlearn.unlearning.sisa", "fedunlearn.unlearning.service", "fedunlearn.federation.ensemble",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_complete(name):
    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(module.__all__)
    for member in module.__all__:
        assert hasattr(module, member), member
