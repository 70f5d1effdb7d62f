"""A kill after the last round's commit loses neither that round's evaluation nor the metrics file."""

from __future__ import annotations

import json

from clients.app import make_app
from fedunlearn.config import settings_to_flat
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.runs import RunFolder
from tests.localgrid import LocalGrid


def _evaluated(run_dir) -> dict[int, set[str]]:
    rows = RunFolder.open(run_dir).read_metrics()
    out: dict[int, set[str]] = {}
    for row in rows:
        if row.get("kind") == "evaluate":
            out.setdefault(row["round"], set()).add(row["org"])
    return out


def test_the_rerun_evaluates_a_committed_round_whose_evaluation_was_lost(small_settings):
    grid = LocalGrid(make_app(), 3, run_config=settings_to_flat(small_settings))
    report = train_workflow(grid, small_settings)
    run = report.run_dir
    complete = _evaluated(run)
    assert set(complete) == {1, 2}
    metrics = run / "metrics.jsonl"
    kept = [line for line in metrics.read_text().splitlines()
            if not (json.loads(line).get("kind") == "evaluate" and json.loads(line)["round"] == 2)]
    metrics.write_text("\n".join(kept) + "\n" + '{"kind": "evaluate", "round": 2, "or')  # killed mid-write
    again = train_workflow(LocalGrid(make_app(), 3, run_config=settings_to_flat(small_settings)), small_settings)
    assert again.rounds == []  # nothing was retrained
    assert _evaluated(run) == complete  # round 2 evaluated again, by every organization; the torn line skipped


def test_a_run_folder_is_private_whatever_the_umask(small_settings, tmp_path):
    """With umask 000 every file would be world-readable and -writable: the run folder (and the
    organizations' data folder) admit only their owner."""
    import os
    import stat

    from fedunlearn.federation.simulation import prepare_simulation

    old = os.umask(0)
    try:
        settings = prepare_simulation(small_settings, tmp_path / "run")
    finally:
        os.umask(old)
    for folder in (tmp_path / "run", tmp_path / "run" / "data"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert settings.data.dir == str((tmp_path / "run" / "data").resolve())
