"""The training workflow the ServerApp runs: set up the run folder, train every shard, export."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.serverapp import Grid

from fedunlearn.certify.binding import bind_settings, check_binding
from fedunlearn.certify.runaudit import RunAudit
from fedunlearn.config import Settings
from fedunlearn.federation.coordinator import Coordinator, RoundSummary
from fedunlearn.federation.serving import ServedModel
from fedunlearn.ledger import Ledger
from fedunlearn.models import resolve_model_path
from fedunlearn.progress import Reporter
from fedunlearn.runs import RunFolder, utc_now

__all__ = ["TrainReport", "default_run_dir", "open_or_create_ledger", "train_workflow"]


@dataclass(frozen=True)
class TrainReport:
    """What a training workflow did and where the run lives."""

    run_dir: Path
    rounds: list[RoundSummary]
    served: ServedModel | None  # None: no round was trained (every organization's DP budget was spent first)


def default_run_dir(settings: Settings) -> Path:
    stamp = utc_now().replace(":", "").replace("-", "")
    return Path("runs") / f"{settings.run.name}-{stamp}"


def open_or_create_ledger(run: RunFolder) -> Ledger:
    if (run.path / "ledger.sqlite").exists():
        return Ledger.open(run.path)
    return Ledger.create(run.path, meta={"created": utc_now()})


def train_workflow(grid: Grid, settings: Settings, *, reporter: Reporter | None = None,
                   between_rounds: Callable[[Grid, Path, int], object] | None = None) -> TrainReport:
    """Train (or resume) the run described by ``settings`` on ``grid`` and export the served model.

    ``between_rounds(grid, run_dir, r)`` runs before each round (and once at the start): the
    ServerApp applies live erasure requests there (:mod:`fedunlearn.unlearning.live`).
    """
    run_dir = Path(settings.run.dir) if settings.run.dir else default_run_dir(settings)
    base = resolve_model_path(settings.model.path or None, size=settings.model.size)
    run = RunFolder.create_or_resume(run_dir, settings, base)
    with open_or_create_ledger(run) as ledger, RunAudit.open(run.path) as audit:
        check_binding(audit, ledger)  # a resumed run: the ledger and run.json must be the logged ones
        bind_settings(audit)  # a new run: its settings enter the signed log before any round
        coord = Coordinator(grid, run, ledger, reporter=reporter, audit=audit)
        coord.enrol()
        coord.initialize()
        coord.connect()
        hook = None if between_rounds is None else (lambda r: between_rounds(grid, run.path, r))
        rounds = coord.train(between_rounds=hook)
        served = coord.export() if coord.trained() else None  # nothing trained: nothing to serve (it says why)
    return TrainReport(run_dir=run.path, rounds=rounds, served=served)
