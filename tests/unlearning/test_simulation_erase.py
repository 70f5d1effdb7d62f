"""A SISA erasure through Flower's own simulation engine (Ray) equals the in-process one."""

from __future__ import annotations

import pytest

from fedunlearn.unlearning.service import erase
from fedunlearn.unlearning.service import simulate_erasure
from fedunlearn.ledger import Ledger
from fedunlearn.unlearning import EraseRequest
from tests.unlearning.conftest import SHARDED, base_settings, copy_run, grid_for

pytestmark = [pytest.mark.slow, pytest.mark.simulation]


def test_sisa_erasure_in_the_simulation_engine(run_factory, tiny_model_dir, tmp_path):
    src = run_factory("sharded", **SHARDED)
    local = erase(copy_run(src, tmp_path / "local"), EraseRequest(("org-0",)),
                  grid=grid_for(base_settings(tiny_model_dir, **SHARDED)))
    run = copy_run(src, tmp_path / "sim")
    result = simulate_erasure(run, EraseRequest(("org-0",), method="sisa"), engine="simulation")
    inprocess = simulate_erasure(copy_run(src, tmp_path / "inprocess"), EraseRequest(("org-0",), method="sisa"))
    assert inprocess.served_hash == local.served_hash  # the default engine: same bits, no Ray
    assert result.served_hash == local.served_hash
    assert result.organizations == ("org-2",) and result.recomputed == {0: (2,)}
    with Ledger.open(run) as ledger:
        assert ledger.dependents("org-0") == []
        assert ledger.organization("org-0").status == "erased"
