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


def test_the_same_served_model_exports_the_same_bytes_in_two_processes(run_factory, tmp_path):
    """peft keeps target_modules in a set, whose order follows per-process string hashing; the
    manifest once held the export time: every exported file must come out byte for byte the same."""
    import subprocess
    import sys

    from tests.unlearning.conftest import SHARDED, copy_run

    outs = []
    for k in range(2):
        run = copy_run(run_factory("sharded", **SHARDED), tmp_path / f"run-{k}")
        import shutil

        shutil.rmtree(run / "export")  # written again below, by another process each time
        out = run / "export" / "served"
        code = ("from fedunlearn.federation.serving import export_served; from fedunlearn.ledger import Ledger; "
                "from fedunlearn.runs import RunFolder; "
                f"r = RunFolder.open({str(run)!r}); l = Ledger.open(r.path); export_served(r, l); l.close()")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "PYTHONHASHSEED": str(k + 1)})
        assert done.returncode == 0, done.stderr
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir()) and "adapter_config.json" in names
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
