"""Packages that import their modules on first use (fedunlearn.lazy)."""

from __future__ import annotations

import subprocess
import sys
import types
from unittest import mock

import pytest

import fedunlearn.certify as certify
from fedunlearn.lazy import lazy_package


def test_a_name_read_while_its_module_is_patched_does_not_stay_patched():
    with mock.patch("fedunlearn.certify.authorize.sign_request", "patched"):
        assert certify.sign_request == "patched"
    assert callable(certify.sign_request)
    with mock.patch("fedunlearn.certify.sign_request", "patched too"):
        assert certify.sign_request == "patched too"
    assert callable(certify.sign_request)


def test_public_names_are_listed_and_unknown_ones_raise():
    assert set(certify.__all__) <= set(dir(certify))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        certify.nothing_here  # noqa: B018


def test_every_public_name_of_the_lazy_packages_resolves():
    code = ("import fedunlearn.certify as c, fedunlearn.models as m, fedunlearn.evaluate as e; "
            "print(all(getattr(p, n) is not None for p in (c, m, e) for n in p.__all__))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_a_map_that_misses_a_public_name_is_refused():
    package = types.ModuleType("fake_lazy_pkg")
    sys.modules["fake_lazy_pkg"] = package
    try:
        with pytest.raises(ImportError, match=r"\['b'\]"):
            lazy_package("fake_lazy_pkg", {"mod": ("a",)}, ["a", "b"])
    finally:
        del sys.modules["fake_lazy_pkg"]
