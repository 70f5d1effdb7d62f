"""Approximate erasure against ``retrain`` on the embedded default model: cost, forgetting, utility, fidelity.

One run of the memorization scenario of ``tests/unlearning/test_forgetting.py`` (3 organizations, 30
records each, one canary per organization repeated 8×, 5 rounds × 8 local epochs, batch 8, lr 1e-2),
trained on the in-process grid with the real ClientApp; ``org-2`` is erased by every organization-level
method on a copy of the run folder. Per method: wall time and client steps (and their ratio to
``retrain``), the subject's canary exposure, membership-inference AUC on the subject's records vs its
holdout (loss and Min-K%++), retained organizations' holdout loss, and mean next-token KL to the
retrained model. The retrain seed spread comes from extra retrains with other run seeds
(:func:`fedunlearn.evaluate.runmodels.retrain_reference`, in process).

Usage: ``.venv/bin/python benchmarks/bench_approx.py [--retrain-seeds 3]``; writes
``benchmarks/results/approx.md`` and ``approx.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench_sisa import machine  # noqa: E402  (this script's folder is on sys.path)
from fedunlearn.evaluate import exposure_report, mean_next_token_kl, mia_results, score_texts  # noqa: E402
from fedunlearn.evaluate.runmodels import load_base, merged_model, retrain_reference, run_consortium  # noqa: E402
from fedunlearn.unlearning.service import erase, prepare_erasure  # noqa: E402
from fedunlearn.federation.workflow import train_workflow  # noqa: E402
from fedunlearn.ledger import Ledger  # noqa: E402
from fedunlearn.models import ensure_default_model  # noqa: E402
from fedunlearn.runs import RunFolder  # noqa: E402
from fedunlearn.training.client import lora_spec  # noqa: E402
from fedunlearn.unlearning import EraseRequest  # noqa: E402
from tests.unlearning.conftest import copy_run, grid_for  # noqa: E402
from tests.unlearning.test_forgetting import RETAINED, SUBJECT, forgetting_settings, head_state  # noqa: E402

#: (label, method, options); ``retrain`` first: every ratio is against it.
METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("retrain", "retrain", {}),
    ("sisa", "sisa", {}),
    ("influence", "influence", {}),  # defaults: GIANT local solve, Fisher curvature, λ = 0.3
    ("influence λ=1", "influence", {"damping": 1.0}),
    ("influence λ=0.2", "influence", {"damping": 0.2}),
    ("influence local hessian λ=1 it=3", "influence", {"curvature": "hessian", "damping": 1.0, "iterations": 3}),
    ("influence federated cg λ=1", "influence", {"solver": "cg", "damping": 1.0}),
    ("influence federated cg λ=0.3", "influence", {"solver": "cg", "damping": 0.3}),
    ("subtract", "subtract", {}),  # defaults: ΔW space, K = auto (3 for these 5 rounds)
    ("subtract K=0", "subtract", {"calibration-rounds": 0}),
    ("subtract K=1", "subtract", {"calibration-rounds": 1}),
    ("subtract K=5", "subtract", {"calibration-rounds": 5}),
    ("subtract factors K=1", "subtract", {"space": "factors", "calibration-rounds": 1}),
    ("negate", "negate", {}),
)


def evaluate(run_dir: Path, states: list[dict[str, torch.Tensor]], weights: list[float],
             reference: torch.nn.Module | None, *, baseline: int = 0) -> tuple[dict[str, Any], torch.nn.Module]:
    """Every metric of one model (``Σ weights[i] ΔW(states[i])`` on the base) about the subject.

    Parameters
    ----------
    run_dir : Path
        The trained run (consortium, base model, settings).
    states, weights
        LoRA states and their weights.
    reference : torch.nn.Module or None
        The retrained model for the KL (``None``: the KL is not computed).
    baseline : int
        Never-inserted canaries scored as the exposure baseline.

    Returns
    -------
    tuple of (dict, torch.nn.Module)
        The metrics and the merged model.
    """
    run = RunFolder.open(run_dir)
    consortium, base = run_consortium(run), load_base(run)
    tok, max_len = base.tokenizer, run.settings.data.max_length
    model = merged_model(base, states, weights, lora_spec(run.settings).scaling)
    subject = consortium.organization(SUBJECT)
    rep = exposure_report(model, tok, subject.canaries, consortium.never_inserted[:baseline], consortium.canary_space,
                          max_length=max_len, batch_size=512)
    members = [r.text for r in subject.train if "#" not in r.id]
    mia = mia_results(score_texts(model, tok, members, max_length=max_len),
                      score_texts(model, tok, subject.texts("holdout"), max_length=max_len),
                      scores=("loss", "min_k_plus_plus"))
    holdout = {}
    for org in RETAINED:
        texts = consortium.organization(org).texts("holdout")
        holdout[org] = float(score_texts(model, tok, texts, max_length=max_len).loss.mean())
    retained = [t for org in RETAINED for t in consortium.organization(org).texts("holdout")]
    out = {"exposure": rep.mean_exposure, "baseline_exposure": [r.exposure for r in rep.baseline],
           "auc_loss": mia["loss"].auc, "auc_minkpp": mia["min_k_plus_plus"].auc,
           "holdout_loss": float(sum(holdout.values()) / len(holdout)), "holdout_loss_per_org": holdout,
           "kl_to_retrain": None if reference is None else
           mean_next_token_kl(reference, model, tok, retained, max_length=max_len).mean}
    return out, model


def _timed_erase(trained: Path, settings, label: str, method: str, options: dict, work: Path):
    """Erase ``SUBJECT`` from a fresh copy of ``trained``; return ``(run folder, result, wall seconds)``."""
    run = copy_run(trained, work / label.replace(" ", "_").replace("=", ""))
    request = EraseRequest((SUBJECT,), method=method, options=options)
    grid = grid_for(settings) if prepare_erasure(run, request) else None
    t = time.perf_counter()  # no pre-erasure hook: that audit is the same for every method, timed once apart
    result = erase(run, request, grid=grid)
    wall = time.perf_counter() - t
    return run, result, wall


def erase_each(trained: Path, settings, methods, work: Path, *, warmup: bool = True,
               repeats: int = 1) -> tuple[dict[str, dict[str, Any]], Any]:
    """Erase ``SUBJECT`` from a copy of ``trained`` with each ``(label, method, options)``; measure and evaluate.

    ``warmup``: first run one untimed ``retrain`` (the first erasure of a process was measured up to
    1.5x slower than later ones: timing ``retrain`` first, cold, flattered every ratio against it).
    ``repeats``: time every method that many times, interleaved (method by method, round after
    round), and report the median (``wall_all``: every time); metrics come from the first round
    (the methods are deterministic on the CPU).

    Returns the rows by label (metrics, wall time, client steps, bytes, rounds, guarantee, notes; KL to
    the ``retrain`` row's model, which must come first) and that retrained model.
    """
    if warmup:
        run, _, _ = _timed_erase(trained, settings, "warm-up", "retrain", {}, work)
        shutil.rmtree(run)
    rows: dict[str, dict[str, Any]] = {}
    reference = None
    for turn in range(repeats):
        for label, method, options in methods:
            run, result, wall = _timed_erase(trained, settings, label, method, options, work)
            if turn:
                rows[label]["wall_all"].append(wall)
                rows[label]["wall_seconds"] = statistics.median(rows[label]["wall_all"])
                shutil.rmtree(run)
                continue
            metrics, model = evaluate(run, [head_state(run)], [1.0], reference)
            if method == "retrain":
                reference, metrics["kl_to_retrain"] = model, 0.0
            rows[label] = metrics | {"method": method, "options": options, "wall_seconds": wall, "wall_all": [wall],
                                     "client_steps": result.cost.client_steps, "bytes": result.cost.bytes_sent,
                                     "rounds": result.cost.rounds, "guarantee": str(getattr(result, "guarantee", "")),
                                     "notes": list(result.notes)}
            print(label, rows[label], flush=True)
            shutil.rmtree(run)
    return rows, reference


#: The methods a user runs by their defaults, timed as the whole ``fedunlearn forget`` command.
COMMAND_METHODS = ("retrain", "sisa", "influence", "subtract", "negate")


def command_seconds(trained: Path, work: Path, methods=COMMAND_METHODS) -> dict[str, float]:
    """Wall seconds of ``fedunlearn forget --run COPY --org SUBJECT --method M`` per method, the whole
    command by the clock as a user runs it: a fresh process (interpreter start, imports), checks,
    authorization, the pre-erasure capture, the erasure, export, certificate. One copy of ``trained``
    each; a command that fails stops the bench with its output."""
    import subprocess
    import sys

    seconds = {}
    for method in methods:
        run = copy_run(trained, work / f"command-{method}")
        try:
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", "from fedunlearn.cli import run; run()", "forget", "--run",
                                   str(run), "--org", SUBJECT, "--method", method], capture_output=True, text=True,
                                  timeout=4 * 3600)  # a hung command stops the bench (TimeoutExpired) instead
            seconds[method] = time.perf_counter() - t
            if done.returncode != 0:
                raise RuntimeError(f"fedunlearn forget --method {method} failed ({done.returncode}): "
                                   f"{(done.stdout + done.stderr)[-2000:]}")
            print(f"command forget --method {method}: {seconds[method]:.1f} s", flush=True)
        finally:
            shutil.rmtree(run, ignore_errors=True)
    return seconds


def capture_seconds(trained: Path, work: Path) -> float:
    """Wall time of the pre-erasure audit (:func:`fedunlearn.evaluate.before.capture_before`) of ``SUBJECT``.

    ``fedunlearn forget`` runs it before every organization-level erasure, whatever the method (it
    evaluates the model served *before*, which an exact erasure purges); :func:`erase_each` times the
    erasures without it, and the tables give this cost once, beside them.
    """
    from fedunlearn.evaluate.before import capture_before

    run = copy_run(trained, work / "capture-before")
    try:
        t = time.perf_counter()
        if capture_before(run, (SUBJECT,)) is None:
            raise RuntimeError("the pre-erasure audit captured nothing: the bench would time an empty call")
        return time.perf_counter() - t
    finally:
        shutil.rmtree(run)


def main() -> None:
    """Train once, erase with every method, evaluate, write ``benchmarks/results/approx.{md,json}``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrain-seeds", type=int, default=3, help="retrains for the seed spread (>= 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # messages outside a Flower runtime
    info = machine() | {"load_average_at_start": list(os.getloadavg()), "torch_threads": torch.get_num_threads()}
    work = Path(tempfile.mkdtemp(prefix="bench-approx-"))
    started = time.perf_counter()
    try:
        settings = forgetting_settings(ensure_default_model(progress=False), work / "trained")
        t = time.perf_counter()
        trained = train_workflow(grid_for(settings), settings).run_dir
        train_seconds = time.perf_counter() - t
        before, _ = evaluate(trained, [head_state(trained)], [1.0], None, baseline=3)
        print("before", before, flush=True)
        rows, reference = erase_each(trained, settings, METHODS, work)
        capture = capture_seconds(trained, work)
        seeds: list[dict[str, Any]] = []
        run = RunFolder.open(trained)
        with Ledger.open(trained) as ledger:
            consortium, base = run_consortium(run), load_base(run)
            for k in range(1, args.retrain_seeds):
                t = time.perf_counter()
                state = retrain_reference(run, ledger, consortium, (SUBJECT,), run.settings.run.seed + k, base=base)
                wall = time.perf_counter() - t
                metrics, _ = evaluate(trained, list(state.states), list(state.weights), reference)
                seeds.append(metrics | {"seed": run.settings.run.seed + k, "wall_seconds_in_process": wall})
                print("retrain seed", seeds[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {"machine": info, "scenario": {"organizations": 3, "subject": SUBJECT, "records_per_org": 30,
                                         "canary_repeats": 8, "rounds": 5, "local_epochs": 8, "batch_size": 8,
                                         "lr": 1e-2, "train_seconds": train_seconds},
           "before": before, "capture_before_seconds": capture, "methods": rows, "retrain_seeds": seeds,
           "total_seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "approx.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    (args.out / "approx.md").write_text(render(doc), encoding="utf-8")
    print(render(doc))


def render(doc: dict[str, Any]) -> str:
    """The Markdown table of ``doc`` (see :func:`main`) with the seed spread and the 0.1 wall-time bar."""
    rows, seeds, m = doc["methods"], doc["retrain_seeds"], doc["machine"]
    ref = rows["retrain"]
    spread_rows = [ref] + seeds
    lo = {k: min(r[k] for r in spread_rows) for k in ("exposure", "auc_loss", "auc_minkpp", "holdout_loss")}
    hi = {k: max(r[k] for r in spread_rows) for k in ("exposure", "auc_loss", "auc_minkpp", "holdout_loss")}
    kl_hi = max([r["kl_to_retrain"] for r in seeds], default=float("nan"))
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    lines = [
        "# Approximate erasure vs `retrain` (benchmarks/bench_approx.py)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"load average at start {load} (cores shared with other work: wall times are noisy).", "",
        f"Scenario: 3 organizations × 30 records, one canary each repeated 8×, 5 rounds × 8 local epochs, "
        f"batch 8, lr 1e-2, embedded default model; training took {doc['scenario']['train_seconds']:.0f} s. "
        f"Subject `{SUBJECT}`. Before erasure: canary exposure {doc['before']['exposure']:.2f} bits "
        f"(never-inserted: {', '.join(f'{x:.2f}' for x in doc['before']['baseline_exposure'])}), "
        f"MIA AUC loss {doc['before']['auc_loss']:.3f}, Min-K%++ {doc['before']['auc_minkpp']:.3f}, "
        f"retained holdout loss {doc['before']['holdout_loss']:.3f}.", "",
        "| method | wall s | wall / retrain | client steps | steps / retrain | exposure (bits) | AUC loss | "
        "AUC Min-K%++ | retained holdout loss | KL to retrain | forgetting within retrain spread? |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        within = all(lo[k] - 1e-9 <= r[k] <= hi[k] + 1e-9 for k in ("exposure", "auc_loss", "auc_minkpp"))
        verdict = "yes" if within else "no (" + ", ".join(
            f"{k} {'above' if r[k] > hi[k] else 'below'}" for k in ("exposure", "auc_loss", "auc_minkpp")
            if not lo[k] - 1e-9 <= r[k] <= hi[k] + 1e-9) + ")"
        lines.append(
            f"| {label} | {r['wall_seconds']:.1f} | {r['wall_seconds'] / ref['wall_seconds']:.2f} | {r['client_steps']} | "
            f"{r['client_steps'] / max(ref['client_steps'], 1):.2f} | {r['exposure']:.2f} | {r['auc_loss']:.3f} | "
            f"{r['auc_minkpp']:.3f} | {r['holdout_loss']:.3f} | {r['kl_to_retrain']:.4f} | {verdict} |")
    for s in seeds:
        lines.append(f"| retrain seed {s['seed']} (in process) | {s['wall_seconds_in_process']:.1f} | | | | "
                     f"{s['exposure']:.2f} | {s['auc_loss']:.3f} | {s['auc_minkpp']:.3f} | {s['holdout_loss']:.3f} | "
                     f"{s['kl_to_retrain']:.4f} | (spread) |")
    lines += ["", f"Retrain spread over {len(spread_rows)} seeds: exposure {lo['exposure']:.2f}-{hi['exposure']:.2f} bits, "
              f"AUC loss {lo['auc_loss']:.3f}-{hi['auc_loss']:.3f}, Min-K%++ {lo['auc_minkpp']:.3f}-{hi['auc_minkpp']:.3f}, "
              f"retained holdout loss {lo['holdout_loss']:.3f}-{hi['holdout_loss']:.3f}, KL between seeds up to {kl_hi:.4f}.", "",
              f"Wall times exclude the pre-erasure audit that `fedunlearn forget` runs before every organization-level "
              f"erasure whatever the method ({doc['capture_before_seconds']:.1f} s here; `--no-capture-before` skips it).", "",
              "Bar: `influence` and `subtract` each at most 0.1 of retrain's wall time:"]
    for label in (k for k in rows if k.startswith(("influence", "subtract"))):
        ratio = rows[label]["wall_seconds"] / ref["wall_seconds"]
        lines.append(f"- {label}: {ratio:.2f} of retrain — {'met' if ratio <= 0.1 else 'NOT met'}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
