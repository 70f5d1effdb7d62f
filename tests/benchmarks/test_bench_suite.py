"""Smoke test of the benchmark suite (benchmarks/run.py) in --quick form on the tiny model.

Not the real suite: it proves every selected section measures real training and erasure and that
RESULTS.md and its plots are written from the measurements.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _runner():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_suite_writes_results_with_measured_sections(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    doc = _runner().main(["--quick", "--grid", "local", "--model", str(tiny_model_dir), "--only",
                          "training,erasure,length,dp,live,scale", "--scale-points", "3:1.0:1:2,6:0.5:2:2", "--out", str(out)])
    text = out.read_text(encoding="utf-8")
    for heading in ("# Benchmark results", "## Local training throughput", "## Erasure", "## Erasure cost against the length",
                    "## DP overhead", "## Erasure requests honored live", "## Scale"):
        assert heading in text
    assert "Load average at start" in text and "Quick mode" in text
    sections = {k.removesuffix("@model/synthetic"): v for k, v in doc["sections"].items()}  # --model: its own variant
    assert sections["training"]["fedunlearn_tokens_per_s"] > 0 and sections["training"]["ratio"] > 0
    methods = sections["erasure"]["methods"]
    assert list(methods) == ["retrain", "sisa", "negate"] and methods["retrain"]["wall_ratio"] == 1.0
    assert methods["sisa"]["kl_to_retrain"] == pytest.approx(0.0, abs=1e-6)  # S = 1: SISA is retraining
    assert methods["negate"]["client_steps"] == 0 and methods["negate"]["kl_to_retrain"] > 0
    assert len(sections["erasure"]["retrain_seeds"]) == 2
    commands = sections["erasure"]["command_seconds"]  # the whole `fedunlearn forget`, by the clock
    assert list(commands) == ["retrain", "negate"] and min(commands.values()) > 0  # --quick: two of the five
    assert commands["retrain"] > methods["retrain"]["wall_seconds"]  # a fresh process pays more than the erasure
    assert "command / retrain" in text
    short, longer = sections["length"]["points"]  # R = 2 and 6: retraining triples, influence and subtract do not
    assert (short["rounds"], longer["rounds"]) == (2, 6)
    assert longer["methods"]["retrain"]["client_steps"] == 3 * short["methods"]["retrain"]["client_steps"]
    for m in ("influence", "subtract"):
        assert longer["methods"][m]["steps_ratio"] < short["methods"][m]["steps_ratio"], m
    assert list(longer["command_seconds"]) == ["retrain"]  # --quick: retrain's command only
    for m in longer["methods"].values():  # timed twice, interleaved: the median of both
        assert len(m["wall_all"]) == 2 and m["wall_seconds"] == pytest.approx(sum(m["wall_all"]) / 2)
    modes = sections["dp"]["modes"]
    assert modes["DP-SGD (record level)"]["epsilon"]["record"] > 0
    assert modes["DP-FedAvg (client level)"]["epsilon"]["client"] > 0
    assert modes["non-private"]["epsilon"] is None
    live = sections["live"]  # a live SISA request: certified between rounds, shard 0 retrained, shard 1 not
    assert live["live request"]["delay_seconds"] > 0 and "delay_seconds" not in live["no request"]
    assert live["live request"]["round_commits"][0] > live["no request"]["round_commits"][0]
    assert live["live request"]["round_commits"][1] == live["no request"]["round_commits"][1] == live["rounds"]
    assert live["live request"]["served_hash"] != live["no request"]["served_hash"]
    points = sections["scale"]["points"]
    assert [(p["orgs"], p["shards"]) for p in points] == [(3, 1), (6, 2)] and not sections["scale"]["failed"]
    for p in points:
        assert p["verify_before"] and p["verify_after"], p["verify_problems"]
        assert p["compaction"]["bytes_after"] < p["compaction"]["bytes_before"]
        assert p["server_rss_peak_mb"] >= p["server_rss_start_mb"] > 0
    assert points[0]["trained_per_round"] == 3.0
    assert 0 < points[1]["trained_per_round"] < 6  # half of each shard's members sampled per round
    assert json.loads(out.with_suffix(".json").read_text())["sections"].keys() == doc["sections"].keys()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [  # a --model run is its own variant
        f"{name}-model-synthetic.svg" for name in ("erasure_cost", "erasure_length", "scale_0", "scale_1", "scale_2")]

    # a rerun of one section with --merge keeps the others and the hand-written reading
    out.write_text(text + "\n## Reading (written by hand)\n\n- the numbers mean this.\n", encoding="utf-8")
    _runner().main(["--quick", "--model", str(tiny_model_dir), "--only", "training", "--merge", "--out", str(out)])
    merged = out.read_text(encoding="utf-8")
    assert "## Erasure" in merged and "## Scale" in merged
    assert merged.rstrip().endswith("## Reading (written by hand)\n\n- the numbers mean this.")


def test_a_section_that_fails_keeps_the_ones_measured_before_it(tiny_model_dir: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    """The results file is written after every section: a failure (or Ctrl-C) in a later one, hours
    into a long run, keeps what was measured."""
    runner = _runner()
    suite = __import__("sys").modules["suite"]

    def fails(opts):
        raise RuntimeError("the dp section broke")

    monkeypatch.setattr(suite, "dp", fails)
    out = tmp_path / "RESULTS.md"
    with pytest.raises(RuntimeError, match="dp section broke"):
        runner.main(["--quick", "--model", str(tiny_model_dir), "--only", "training,dp", "--out", str(out)])
    assert "## Local training throughput" in out.read_text(encoding="utf-8")
    kept = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["sections"]
    assert list(kept) == ["training@model/synthetic"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown section.*'sclae'.*scale"):
        _runner().main(["--only", "sclae", "--out", str(tmp_path / "R.md")])


def test_fedunlearn_bench_runs_the_suite_script(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedunlearn.cli import app

    result = CliRunner().invoke(app, ["bench", "--only", "sclae", "--out", str(tmp_path / "R.md")])
    assert result.exit_code == 1  # benchmarks/run.py ran in a subprocess and refused the section
    assert not (tmp_path / "R.md").exists()


def test_kept_reading_is_the_hand_written_tail(tmp_path: Path) -> None:
    runner = _runner()
    out = tmp_path / "RESULTS.md"
    assert runner.kept_reading(out) == ""  # no file yet
    out.write_text("# Benchmark results\n\n## Scale\n\n| a |\n", encoding="utf-8")
    assert runner.kept_reading(out) == ""  # no reading section
    out.write_text("# Benchmark results\n\n## Scale\n\n| a |\n\n## Reading (by hand)\n\n- x\n\n", encoding="utf-8")
    assert runner.kept_reading(out) == "## Reading (by hand)\n\n- x\n"


@pytest.mark.slow
def test_quick_realtext_section_measures_the_default_model(tmp_path: Path) -> None:
    """The realtext section on the shipped small default (cached by the slow model tests)."""
    out = tmp_path / "RESULTS.md"
    doc = _runner().main(["--quick", "--only", "realtext", "--size", "small", "--out", str(out)])
    section = doc["sections"]["realtext"]
    assert section["parameters"] == 1_573_504 and section["schedule"]["rounds"] == 2
    assert section["build"]["bits_per_byte"]["heldout-slice"]["model"] < section["build"]["bits_per_byte"]["heldout-slice"]["unigram"]
    rows = section["organizations"]
    assert len(rows) >= 2 and all(r["served_bpb"] > 0 and r["never_p95"] >= 0 for r in rows)
    assert "## What the default model learns of real text" in out.read_text(encoding="utf-8")


def test_sections_of_every_size_and_text_sit_side_by_side() -> None:
    """One results file holds a section at each model size and text: keys ``name@size/text`` (the
    reference, small model on synthetic text, keeps the plain name), ordered section by section,
    small before large, each variant's heading naming it."""
    runner = _runner()
    from suite import Options, section_key

    assert section_key("erasure", Options()) == "erasure"
    assert section_key("erasure", Options(text="real")) == "erasure@small/real"
    assert section_key("erasure", Options(size="large", text="real")) == "erasure@large/real"
    assert section_key("realtext", Options(size="large")) == "realtext@large/real"
    assert section_key("realtext", Options()) == "realtext"
    assert section_key("erasure", Options(model="/some/model")) == "erasure@model/synthetic"  # never the reference
    keys = ["dp@large/real", "erasure@large/real", "erasure", "realtext@large/real", "erasure@small/real", "realtext"]
    ordered = [k for k, _ in sorted(((k, {}) for k in keys), key=runner._order)]
    assert ordered == ["realtext", "realtext@large/real", "erasure", "erasure@small/real", "erasure@large/real",
                       "dp@large/real"]
    assert runner._titled("## DP overhead\n\nbody", "large/real") == "## DP overhead (large model, real text)\n\nbody"
    assert runner._titled("## DP overhead\n\nbody", "") == "## DP overhead\n\nbody"


def test_a_variants_plots_do_not_overwrite_the_references() -> None:
    runner = _runner()
    plots: dict[str, str] = {}
    runner.RENDER["fake"] = lambda sec, p: runner._plot(p, "chart", f"<svg>{sec['n']}</svg>")
    try:
        ref = runner._render_variant("fake", {"n": 1}, plots)
        var = runner._render_variant("fake@large/real", {"n": 2}, plots)
    finally:
        del runner.RENDER["fake"]
    assert plots == {"chart": "<svg>1</svg>", "chart-large-real": "<svg>2</svg>"}
    assert "plots/chart.svg" in ref and "plots/chart-large-real.svg" in var
