"""The public API of fedunlearn.evaluate: sorted, importable, results are frozen dataclasses."""

from __future__ import annotations

import dataclasses

import fedunlearn.evaluate as evaluate


def test_all_is_sorted_and_importable() -> None:
    assert evaluate.__all__ == sorted(evaluate.__all__)
    for name in evaluate.__all__:
        assert getattr(evaluate, name) is not None


def test_result_types_are_frozen_dataclasses() -> None:
    for name in evaluate.__all__:
        obj = getattr(evaluate, name)
        if isinstance(obj, type):
            assert dataclasses.is_dataclass(obj), name
            assert obj.__dataclass_params__.frozen, name
