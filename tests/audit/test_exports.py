"""The public API of fedunlearn.audit: what outside auditors script against."""

from __future__ import annotations

import importlib
import inspect

import pytest

import fedunlearn.audit as audit

MODULES = ["canonical", "checkpoint", "events", "keys", "log", "merkle", "verify"]


@pytest.mark.parametrize(
    "module", [audit, *(importlib.import_module(f"fedunlearn.audit.{m}") for m in MODULES)]
)
def test_all_is_sorted_and_complete(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    # isort order (as ruff RUF022): CONSTANTS, then Classes, then functions, each alphabetical.
    key = [(0 if n.isupper() else 1 if n[:1].isupper() else 2, n) for n in names]
    assert key == sorted(key)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(module, name), name


def test_merkle_signatures_are_the_documented_ones() -> None:
    from fedunlearn.audit import merkle

    expected = {
        "leaf_hash": ["entry"],
        "root_hash": ["entries"],
        "inclusion_proof": ["entries", "index"],
        "verify_inclusion": ["leaf_hash", "index", "tree_size", "proof", "root"],
        "consistency_proof": ["entries", "old_size"],
        "verify_consistency": ["old_size", "new_size", "old_root", "new_root", "proof"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(merkle, name)).parameters) == params, name
