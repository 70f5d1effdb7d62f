"""The generic named registry and the unlearner registry built on it."""

from __future__ import annotations

import pytest

from fedunlearn.errors import ConfigError, UnknownNameError
from fedunlearn.registry import Registry
from fedunlearn.unlearning import UNLEARNERS, SisaUnlearner, get_unlearner, register_unlearner


def test_registry_names_duplicates_and_unknown_names():
    reg: Registry[int] = Registry("widget")
    reg.register("a-1", 1)
    with pytest.raises(ConfigError, match=r"widget 'a-1' is already registered.*force=True"):
        reg.register("a-1", 2)
    reg.register("a-1", 2, force=True)
    assert reg.get("A-1") == 2 and "a-1" in reg and list(reg) == ["a-1"] and len(reg) == 1
    for bad in ("Upper", "1st", "", "has space"):
        with pytest.raises(ConfigError, match="lowercase"):
            reg.register(bad, 3)
    reg.register("b", 3)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; valid widgets are: 'a-1', 'b'") as info:
        reg.get("c")
    assert isinstance(info.value, KeyError)
    reg.unregister("b")
    assert reg.names() == ["a-1"]


def test_builtin_unlearners_are_registered_on_import():
    assert {"sisa", "drop", "retrain"} <= set(UNLEARNERS.names())
    assert isinstance(get_unlearner("SISA"), SisaUnlearner)
    with pytest.raises(ConfigError, match="already registered"):
        register_unlearner("sisa", SisaUnlearner)
