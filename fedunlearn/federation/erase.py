"""The erasure workflow the ServerApp runs, and the Python API around it.

``erase_workflow(grid, run, request)`` opens the run's ledger and hands the request to the
registered unlearner, which retrains through ``grid`` (addressing only the organizations it
needs). :func:`erase` is the same without Flower, for erasures that train nothing (an S = N drop)
or with any grid the caller brings; :func:`prepare_erasure` checks a request and says whether it
needs Flower, before anything starts; :func:`erasure_workflow` adapts a request to the ServerApp's
``workflow=`` hook (see ``server/app.py`` and :func:`~fedunlearn.federation.simulation.simulate_erasure`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from flwr.serverapp import Grid

from fedunlearn.config import Settings
from fedunlearn.ledger import Ledger
from fedunlearn.progress import LogReporter, Reporter
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning import EraseRequest, Federation, UnlearnResult, check_request, get_unlearner, pending_erasure

__all__ = ["erase", "erase_workflow", "erasure_workflow", "log_applied_erasure", "prepare_erasure"]


def prepare_erasure(run_dir: Path, request: EraseRequest) -> bool:
    """Check ``request`` against the run without changing anything; return whether it needs Flower.

    Raises
    ------
    RunStateError
        Not a run folder, another format, a subject already erased, or nobody would remain.
    UnknownNameError
        Unknown method or organization (the message lists the valid ones).
    ConfigError
        The method cannot serve the run's topology.
    """
    run = RunFolder.open(run_dir)
    unlearner = get_unlearner(request.method)
    with Ledger.open(run.path) as ledger:
        pending = pending_erasure(ledger)
        same = pending is not None and pending["subjects"] == list(request.subjects)
        if unlearner.level == "record":  # one organization forgets some records and stays
            from fedunlearn.unlearning.records import check_record_request

            check_record_request(request, ledger)
        else:
            check_request(request, ledger, resuming=same)
        unlearner.check(run)
        return unlearner.needs_grid(request, ledger, run)


def erase_workflow(grid: Grid | None, run: RunFolder, request: EraseRequest, reporter: Reporter | None = None) -> UnlearnResult:
    """Erase ``request.subjects`` from ``run`` with the requested method, retraining over ``grid``."""
    unlearner = get_unlearner(request.method)
    with Ledger.open(run.path) as ledger:
        federation = Federation(run=run, ledger=ledger, grid=grid, reporter=reporter or LogReporter())
        return unlearner.unlearn(request, federation)


def erase(run_dir: Path, request: EraseRequest, *, grid: Grid | None = None,
          reporter: Reporter | None = None) -> UnlearnResult:
    """Python API: erase from the run folder ``run_dir`` (``grid=None`` unless training is needed)."""
    return erase_workflow(grid, RunFolder.open(run_dir), request, reporter)


def erasure_workflow(request: EraseRequest) -> Callable[..., UnlearnResult]:
    """A ServerApp workflow ``(grid, settings, *, reporter) -> UnlearnResult`` erasing ``request``.

    The run folder is ``settings.run.dir``; the run's own settings are used, except for the
    operational time-outs (``run.round-timeout``, ``run.discovery-timeout``) of ``settings``.
    """

    def workflow(grid: Grid, settings: Settings, *, reporter: Reporter | None = None) -> UnlearnResult:
        run = RunFolder.open(Path(settings.run.dir))
        timeouts = {"round_timeout": settings.run.round_timeout, "discovery_timeout": settings.run.discovery_timeout}
        run = dataclasses.replace(run, settings=run.settings.replace(run=timeouts))
        return erase_workflow(grid, run, request, reporter)

    return workflow


def log_applied_erasure(run_dir: Path, result: UnlearnResult) -> None:
    """Bring the run's audit log up to date after an applied erasure.

    Logs the retrained round commits, an ``erasure-applied`` event (subjects as keyed hashes,
    method, guarantee, served hashes before and after), the new export's file hashes, and signs a
    checkpoint, so that ``fedunlearn verify`` checks the served model the erasure produced.
    """
    from fedunlearn.certify.runaudit import RunAudit

    run = RunFolder.open(run_dir)
    with Ledger.open(run.path) as ledger, RunAudit.open(run.path) as audit:
        audit.sync(ledger, run.settings.dp)
        audit.append({"type": "erasure-applied", "subjects": sorted(audit.subject(s) for s in result.subjects),
                      "method": result.method, "guarantee": result.guarantee, "served": result.served_hash,
                      "previous_served": result.previous_served_hash})
        export = run.path / "export"
        audit.log_export(result.served_hash, sorted(p for p in export.iterdir() if p.is_dir()))
        audit.checkpoint()
