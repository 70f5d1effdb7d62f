"""The benchmark suite's sections: each measures for real and returns a JSON-able dict.

Sections reuse the single-purpose scripts next to this file (import, never copy):
``bench_approx`` (erasure methods, forgetting metrics), ``bench_training`` (fit_local against a
plain PyTorch loop), ``bench_scale`` (simulated organizations through Flower's Ray engine, ledger
storage and compaction). ``benchmarks/run.py`` (``fedunlearn bench``) runs them and writes
``benchmarks/RESULTS.md``.

Every section takes a :class:`Options`: ``quick`` shrinks the work to a smoke test (seconds on a
tiny model), ``model``/``device`` choose the base model and the device (``cuda``: the same code
on the GPU, the model in its own dtype, e.g. bf16), ``grid`` the federation: ``ray`` (Flower's
simulation engine) or ``local`` (the in-process grid of ``tests/localgrid.py``: real Messages and
the real ClientApp, no Ray).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

SECTIONS = ("realtext", "training", "erasure", "length", "dp", "live", "scale")


@dataclass(frozen=True)
class Options:
    quick: bool = False
    model: str = ""  # local model folder; "" = the embedded default
    device: str = "cpu"
    grid: str = "ray"  # scale section: ray | local
    work: Path = field(default_factory=lambda: Path("/tmp"))
    scale_points: tuple[tuple[int, float, int, int], ...] = ()  # (orgs, fraction, shards, rounds)
    size: str = "small"  # the embedded default's size when model is ""
    text: str = "synthetic"  # data.text of every generated consortium: synthetic | real


def _with_text(settings, opts: Options):
    """``settings`` with the benchmark's data realism (``data.text``)."""
    return settings.replace(data={"text": opts.text})


def _model(opts: Options) -> str:
    from fedunlearn.models import resolve_model_path

    return str(resolve_model_path(opts.model or None, size=opts.size))


def _local_grid(settings):
    from tests.unlearning.conftest import grid_for

    return grid_for(settings)


def _task_identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # messages outside a Flower runtime


# -- local training throughput ----------------------------------------------------------------------
def training(opts: Options) -> dict[str, Any]:
    """fedunlearn's fit_local against a plain PyTorch loop (``bench_training.bench_local``)."""
    from bench_training import bench_local

    from fedunlearn.config import Settings

    settings = _with_text(Settings().replace(model={"path": _model(opts), "device": opts.device}), opts)
    if opts.quick:
        settings = settings.replace(data={"records_per_org": 16, "holdout_per_org": 4}, train={"local_epochs": 1})
    return bench_local(repeats=1 if opts.quick else 3, settings=settings)


# -- erasure cost and quality against retraining ---------------------------------------------------
QUICK_METHODS = ("retrain", "sisa", "negate")


def erasure(opts: Options) -> dict[str, Any]:
    """Every method of ``bench_approx.METHODS`` on one trained run, side by side, with the retrain seed spread.

    The scenario is ``bench_approx``'s (3 organizations, one memorized canary each, subject ``org-2``);
    ``quick`` trains 2 rounds × 1 epoch and runs :data:`QUICK_METHODS` with 2 retrain seeds.
    """
    import bench_approx
    from bench_approx import METHODS, evaluate

    from fedunlearn.evaluate.runmodels import load_base, retrain_reference, run_consortium
    from fedunlearn.federation.workflow import train_workflow
    from fedunlearn.ledger import Ledger
    from fedunlearn.runs import RunFolder
    from tests.unlearning.test_forgetting import SUBJECT, forgetting_settings, head_state

    _task_identity()
    work = opts.work / "erasure"
    settings = _with_text(forgetting_settings(Path(_model(opts)), work / "trained").replace(model={"device": opts.device}), opts)
    methods = [m for m in METHODS if not opts.quick or m[0] in QUICK_METHODS]
    if opts.quick:  # 2-digit canaries: exposure ranks among 100 candidates instead of 10 000
        settings = settings.replace(train={"rounds": 2, "local_epochs": 1},
                                    data={"canary_digits": 2, "records_per_org": 12, "holdout_per_org": 8})
    t = time.perf_counter()
    trained = train_workflow(_local_grid(settings), settings).run_dir
    train_seconds = time.perf_counter() - t
    before, _ = evaluate(trained, [head_state(trained)], [1.0], None, baseline=3)
    rows, reference = bench_approx.erase_each(trained, settings, methods, work, warmup=not opts.quick)
    capture = bench_approx.capture_seconds(trained, work)
    commands = bench_approx.command_seconds(  # the whole `fedunlearn forget`, by the clock
        trained, work, ("retrain", "negate") if opts.quick else bench_approx.COMMAND_METHODS)
    base_row = rows["retrain"]
    for row in rows.values():
        row["wall_ratio"] = row["wall_seconds"] / base_row["wall_seconds"]
        row["steps_ratio"] = row["client_steps"] / base_row["client_steps"] if base_row["client_steps"] else None
        row["bytes_ratio"] = row["bytes"] / base_row["bytes"] if base_row["bytes"] else None
    # the retrain seed spread: retrains with other training seeds (in process, cached per seed)
    spread = [{"seed": 0, **{k: base_row[k] for k in ("exposure", "auc_loss", "auc_minkpp", "holdout_loss")}}]
    run = RunFolder.open(trained)
    with Ledger.open(trained) as ledger:
        consortium, base = run_consortium(run), load_base(run)
        for seed in range(1, 2 if opts.quick else 3):
            served = retrain_reference(run, ledger, consortium, (SUBJECT,), seed, base=base)
            metrics, _ = evaluate(trained, list(served.states), list(served.weights), reference)
            spread.append({"seed": seed, **{k: metrics[k] for k in ("exposure", "auc_loss", "auc_minkpp",
                                                                     "holdout_loss", "kl_to_retrain")}})
    return {"scenario": bench_approx.__doc__.split("\n\n")[1].replace("\n", " "), "subject": SUBJECT,
            "train_seconds": train_seconds, "before": before, "capture_before_seconds": capture, "methods": rows, "retrain_seeds": spread,
            "command_seconds": commands, "quick": opts.quick}


# -- erasure cost against the length of training ---------------------------------------------------
LENGTH_METHODS = ("retrain", "influence", "subtract")
LENGTH_REPEATS = 3  # each method timed 3 times, interleaved, after a warm-up; the median is reported


def length(opts: Options) -> dict[str, Any]:
    """``retrain``, ``influence`` and ``subtract`` on the erasure scenario trained for R rounds, for several R.

    What an erasure costs relative to retraining depends on how long training was: ``retrain``
    repeats all R rounds × E local epochs, while ``influence`` costs a fixed few passes over the
    data (the subject's gradient, the remaining organizations' Fisher and their gradient after the
    step) and ``subtract`` K calibration rounds of ``calibration-epochs`` (K = auto: one every 2 replayed
    rounds, at least 3, so it grows with R too). Same scenario as the
    erasure section, only ``train.rounds`` changes; quality is measured as there.
    """
    import bench_approx
    from bench_approx import METHODS

    from fedunlearn.federation.workflow import train_workflow
    from tests.unlearning.test_forgetting import forgetting_settings

    _task_identity()
    methods = [m for m in METHODS if m[0] in LENGTH_METHODS]
    points = []
    for rounds in ((2, 6) if opts.quick else (5, 10, 20)):
        work = opts.work / f"length-{rounds}"
        settings = _with_text(forgetting_settings(Path(_model(opts)), work / "trained"), opts).replace(
            model={"device": opts.device}, train={"rounds": rounds})
        if opts.quick:
            settings = settings.replace(train={"local_epochs": 1},
                                        data={"canary_digits": 2, "records_per_org": 12, "holdout_per_org": 8})
        t = time.perf_counter()
        trained = train_workflow(_local_grid(settings), settings).run_dir
        train_seconds = time.perf_counter() - t
        rows, _ = bench_approx.erase_each(trained, settings, methods, work, repeats=2 if opts.quick else LENGTH_REPEATS)
        ref = rows["retrain"]
        commands = bench_approx.command_seconds(trained, work, ("retrain",) if opts.quick else LENGTH_METHODS)
        points.append({"rounds": rounds, "local_epochs": settings.train.local_epochs, "train_seconds": train_seconds,
                       "command_seconds": commands,
                       "methods": {label: {k: r[k] for k in ("wall_seconds", "wall_all", "client_steps", "exposure",
                                                             "auc_loss", "holdout_loss", "kl_to_retrain")}
                                   | {"wall_ratio": r["wall_seconds"] / ref["wall_seconds"],
                                      "steps_ratio": r["client_steps"] / max(ref["client_steps"], 1)}
                                   for label, r in rows.items()}})
        print(f"length R={rounds}", {k: round(v["wall_ratio"], 3) for k, v in points[-1]["methods"].items()}, flush=True)
    return {"points": points, "methods": list(LENGTH_METHODS), "repeats": 2 if opts.quick else LENGTH_REPEATS}


# -- DP overhead --------------------------------------------------------------------------------------
DP_MODES: dict[str, dict[str, Any]] = {
    "non-private": {},
    "DP-SGD (record level)": {"record_level": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0},
    "DP-FedAvg (client level)": {"client_level": True, "client_noise_multiplier": 1.0, "client_clip": 0.1},
}


def dp(opts: Options) -> dict[str, Any]:
    """The same consortium trained non-privately, with DP-SGD and with DP-FedAvg: time and utility.

    Utility: mean holdout loss (nats/token) of the organizations after the last round; ε as the
    run's audit log accounts it (PRV accountant, δ = dp.delta), when DP is on.
    """
    from fedunlearn.config import OrganizationSettings, Settings
    from fedunlearn.federation.workflow import train_workflow

    _task_identity()
    orgs = tuple(OrganizationSettings(name=f"org-{i}") for i in range(2 if opts.quick else 4))
    rows = {}
    for label, dp_settings in DP_MODES.items():
        settings = Settings(organizations=orgs).replace(
            run={"dir": str(opts.work / "dp" / label.split()[0])},
            model={"path": _model(opts), "device": opts.device},
            data={"records_per_org": 12 if opts.quick else 64, "holdout_per_org": 4 if opts.quick else 24,
                  "canaries_per_org": 1, "canary_repeats": 1, "never_inserted": 5, "public_documents": 20,
                  "max_length": 48, "text": opts.text},
            train={"rounds": 1 if opts.quick else 4, "local_epochs": 1, "batch_size": 8, "lr": 1e-2},
            dp=dp_settings)
        t = time.perf_counter()
        report = train_workflow(_local_grid(settings), settings)
        seconds = time.perf_counter() - t
        last = [s for s in report.rounds if s.round == settings.train.rounds]
        losses = [v for s in last for v in s.eval_loss.values()]
        rows[label] = {"seconds": seconds, "client_seconds": sum(s.client_seconds for s in report.rounds),
                       "holdout_loss": statistics.mean(losses) if losses else None,
                       "epsilon": _epsilon(report.run_dir), "settings": dp_settings}
    base = rows["non-private"]
    for row in rows.values():
        row["time_ratio"] = row["seconds"] / base["seconds"]
        row["loss_delta"] = (row["holdout_loss"] - base["holdout_loss"]
                             if row["holdout_loss"] is not None and base["holdout_loss"] is not None else None)
    return {"organizations": len(orgs), "rounds": 1 if opts.quick else 4, "modes": rows}


def _epsilon(run_dir: Path) -> dict[str, float] | None:
    """Largest ε per DP level over the organizations, from the run's audit log (PRV accountant)."""
    from fedunlearn.certify.budget import privacy_accounts
    from fedunlearn.certify.runaudit import RunAudit
    from fedunlearn.runs import RunFolder

    run = RunFolder.open(run_dir)
    if not run.settings.dp.enabled:
        return None
    with RunAudit.open(run_dir) as audit:
        accounts = privacy_accounts(audit, run.settings.organization_names, run.settings.dp)
    out: dict[str, float] = {}
    for reports in accounts.values():
        for level, report in reports.items():
            out[level] = max(out.get(level, 0.0), report.epsilon)
    return out or None


# -- live erasure requests -------------------------------------------------------------------------
def live(opts: Options) -> dict[str, Any]:
    """A request honored inside a running training: its delay and the time the others lose.

    The same training twice (after an untimed warm-up) on the in-process grid, live requests honored before every round
    (``fedunlearn.unlearning.live.apply_pending``, as the ServerApp does): once with no request,
    once with a signed SISA request for ``org-2`` (shard 0, which it shares with ``org-0``)
    arriving before round ``R // 2 + 1``. Delay: request queued -> certificate written. Lost: the
    extra wall time of the whole training (the erasure runs between rounds, so every shard waits
    for it); per shard, rounds trained in each run.
    """
    from fedunlearn.certify import RunAudit, sign_request
    from fedunlearn.config import OrganizationSettings, Settings
    from fedunlearn.federation.workflow import train_workflow
    from fedunlearn.ledger import Ledger
    from fedunlearn.unlearning.live import apply_pending, submit

    _task_identity()
    rounds = 2 if opts.quick else 6
    arrive = rounds // 2 + 1
    orgs = tuple(OrganizationSettings(name=f"org-{i}") for i in range(4))
    out: dict[str, Any] = {"organizations": len(orgs), "shards": 2, "rounds": rounds, "request_before_round": arrive,
                           "subject": "org-2"}
    for label in ("warm-up", "no request", "live request"):  # the first training of a process runs slower
        settings = Settings(organizations=orgs).replace(
            run={"dir": str(opts.work / "live" / label.replace(" ", "-"))},
            model={"path": _model(opts), "device": opts.device},
            data={"records_per_org": 12 if opts.quick else 48, "holdout_per_org": 4 if opts.quick else 16,
                  "canaries_per_org": 1, "canary_repeats": 2, "never_inserted": 5, "public_documents": 20,
                  "max_length": 48, "text": opts.text},
            train={"rounds": rounds, "local_epochs": 1, "batch_size": 8, "lr": 1e-2}, topology={"shards": 2})
        marks: dict[str, float] = {}

        def between(grid, run_dir, rnd, label=label, marks=marks):
            if label == "live request" and rnd == arrive and "queued" not in marks:
                with RunAudit.open(run_dir) as audit:
                    submit(run_dir, sign_request(audit.signer, run=audit.origin, subjects=["org-2"], method="sisa"))
                marks["queued"] = time.perf_counter()
            done = apply_pending(run_dir, grid)
            if any(o["state"] == "applied" for o in done):
                marks["certified"] = time.perf_counter()

        t = time.perf_counter()
        report = train_workflow(_local_grid(settings), settings, between_rounds=between)
        row: dict[str, Any] = {"wall_seconds": time.perf_counter() - t}
        with RunAudit.open(report.run_dir) as audit:  # every round committed, on any branch
            commits = [e for _, e in audit.events("round-commit") if e.get("round", 0) > 0]
        row["round_commits"] = {s: sum(1 for e in commits if e.get("shard") == s) for s in range(2)}
        with Ledger.open(report.run_dir) as ledger:
            row["served_hash"] = ledger.served()["served_hash"]
        if marks.get("certified"):
            row["delay_seconds"] = marks["certified"] - marks["queued"]
        if label != "warm-up":
            out[label] = row
    out["lost_seconds"] = out["live request"]["wall_seconds"] - out["no request"]["wall_seconds"]
    return out


# -- scale ----------------------------------------------------------------------------------------
DEFAULT_POINTS = ((10, 1.0, 1, 5), (100, 1.0, 1, 5), (10, 1.0, 1, 3), (100, 0.1, 1, 3), (1000, 0.01, 1, 3),
                  (100, 1.0, 10, 3))
QUICK_POINTS = ((4, 1.0, 1, 2), (8, 0.5, 2, 2))


def scale(opts: Options) -> dict[str, Any]:
    """Scale points (orgs, fraction, shards, rounds); Ray points each run in a fresh process."""
    from bench_scale import run_point, run_point_subprocess

    points = opts.scale_points or (QUICK_POINTS if opts.quick else DEFAULT_POINTS)
    rows = []
    failed = []
    for orgs, fraction, shards, rounds in points:
        try:
            if opts.grid == "ray":
                rows.append(run_point_subprocess(orgs, fraction, shards, rounds, model=opts.model, device=opts.device))
            else:
                _task_identity()
                rows.append(run_point(orgs, fraction, shards, rounds, opts.work / "scale", model=opts.model,
                                      device=opts.device, grid=_local_grid))
        except Exception as exc:  # noqa: BLE001 - one failed point is reported, the others still measured
            failed.append({"orgs": orgs, "fraction": fraction, "shards": shards, "rounds": rounds,
                           "error": str(exc)[-1500:]})
            print(f"scale point {orgs} orgs f={fraction} S={shards} FAILED: {str(exc)[-300:]}", flush=True)
            continue
        print(f"scale point {orgs} orgs f={fraction} S={shards}: {rows[-1]['total_s']:.0f} s", flush=True)
        print("SCALE-POINT " + json.dumps(rows[-1]), flush=True)  # kept in the log if a later point fails
    return {"grid": opts.grid, "points": rows, "failed": failed}


def machine(opts: Options) -> dict[str, Any]:
    """CPU, cores, RAM, load average, library versions and the device the suite ran on."""
    import psutil
    import torch
    from bench_sisa import machine as versions

    info = versions() | {"ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
                         "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                         "torch_threads": torch.get_num_threads(), "device": opts.device,
                         "model": opts.model or "embedded default"}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# -- what the model learns of real text ------------------------------------------------------------
def realtext(opts: Options) -> dict[str, Any]:
    """The model's bits per byte and the demo schedule's memorization (``bench_realtext.run_size``)."""
    from bench_realtext import DEMO_RECORDS, run_size

    if opts.model:
        raise SystemExit("the realtext section measures the embedded default (--size), not --model")
    return run_size(opts.size, opts.device, rounds=2 if opts.quick else None, records=24 if opts.quick else DEMO_RECORDS)


def section_key(name: str, opts: Options) -> str:
    """Key of a section's results: its name for the reference setting (small model, synthetic
    text), else ``"name@size/text"``, so that one results file holds a section at every model size
    and text side by side (``--merge`` keeps the others). ``realtext`` always runs on real text."""
    size = opts.size if not opts.model else "model"
    text = "real" if name == "realtext" else opts.text
    reference = size == "small" and (text == "synthetic" or name == "realtext")
    return name if reference else f"{name}@{size}/{text}"


def split_key(key: str) -> tuple[str, str]:
    """``"erasure@large/real"`` -> ``("erasure", "large/real")``; ``"erasure"`` -> ``("erasure", "")``."""
    name, _, variant = key.partition("@")
    return name, variant


def run_sections(names: list[str], opts: Options, on_section=None) -> dict[str, Any]:
    """Run ``names`` (from :data:`SECTIONS`) and return ``{"machine": ..., name: result, ...}``;
    ``on_section(doc)`` after each one (the results file is written as sections finish, so a stop
    or a failure later keeps what was measured)."""
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}: expected a comma-separated subset of {list(SECTIONS)}")
    opts.work.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"machine": machine(opts), "quick": opts.quick, "sections": {}}
    funcs = {"realtext": realtext, "training": training, "erasure": erasure, "length": length, "dp": dp, "live": live,
             "scale": scale}
    for name in names:
        t, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
        print(f"== {name}", flush=True)
        doc["sections"][section_key(name, opts)] = funcs[name](opts) | {
            "size": opts.size if not opts.model else "model", "text": opts.text, "quick": opts.quick, "section_seconds": time.perf_counter() - t, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_start": load, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
        doc["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        if on_section is not None:
            on_section(doc)
    return doc
