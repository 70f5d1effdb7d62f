"""The erasure workflow the ServerApp runs, and the Python API around it.

``erase_workflow(grid, run, request)`` opens the run's ledger and hands the request to the
registered unlearner, which retrains through ``grid`` (addressing only the organizations it
needs). :func:`erase` is the same without Flower, for erasures that train nothing (an S = N drop)
or with any grid the caller brings; :func:`prepare_erasure` checks a request and says whether it
needs Flower, before anything starts; :func:`erasure_workflow` adapts a request to the ServerApp's
``workflow=`` hook (see ``server/app.py`` and :func:`~fedunlearn.federation.simulation.simulate_erasure`).

Every erasure is authorized and certified the same way, whether ``fedunlearn forget`` or the
ServerApp (``run.workflow = "erase"`` under ``flwr run``) applies it: :func:`coordinator_request` /
:func:`authorize_erasure` before, :func:`certify_applied_erasure` after;
:func:`certified_erasure_workflow` wraps the three around a deployment erasure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from flwr.serverapp import Grid

from fedunlearn.certify.authorize import Authorization, SignedRequest
from fedunlearn.certify.certificate import Certificate
from fedunlearn.config import Settings
from fedunlearn.ledger import Ledger
from fedunlearn.progress import LogReporter, Reporter
from fedunlearn.runs import RunFolder
from fedunlearn.errors import UnknownNameError
from fedunlearn.unlearning import (UNLEARNERS, EraseRequest, Federation, UnlearnResult, check_request, get_unlearner,
                                   pending_erasure)

__all__ = [
    "authorize_erasure",
    "certified_erase",
    "certified_erasure_workflow",
    "certify_applied_erasure",
    "coordinator_request",
    "erase",
    "erase_workflow",
    "erasure_workflow",
    "prepare_erasure",
]


def _unlearner_for(request: EraseRequest):
    """The request's method; an unknown one lists the methods of the request's level only."""
    if request.method not in UNLEARNERS.names():
        record_level = bool(request.records)
        valid = [n for n in UNLEARNERS.names() if (get_unlearner(n).level == "record") == record_level]
        raise UnknownNameError("record-level erasure method" if record_level else "erasure method", request.method,
                               ["sisa" if n == "sisa-records" else n for n in valid])  # the CLI's name for it
    return get_unlearner(request.method)


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
    unlearner = _unlearner_for(request)
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
    unlearner = _unlearner_for(request)
    reporter = reporter or LogReporter()
    with Ledger.open(run.path) as ledger:
        if unlearner.level != "record":  # the served model may be purged below: audit it first
            _capture_before(run, request, ledger, reporter)
        federation = Federation(run=run, ledger=ledger, grid=grid, reporter=reporter)
        return unlearner.unlearn(request, federation)


def _capture_before(run: RunFolder, request: EraseRequest, ledger: Ledger, reporter: Reporter) -> None:
    """Keep the pre-erasure model's metrics (``fedunlearn.evaluate.before``) without ever blocking the erasure.

    An invalid request is refused first, as the erasure itself would refuse it (nothing is evaluated
    for it). A capture that fails is reported and the erasure goes on: the right to erasure does not
    wait on an audit; ``evaluate`` then reports the pre-erasure model as unavailable.
    """
    from fedunlearn.errors import FedUnlearnError
    from fedunlearn.evaluate.before import capture_before

    check_request(request, ledger, resuming=True)  # resumed erasures: capture_before finds nothing to do
    try:
        capture_before(run.path, request.subjects, ledger=ledger)
    except FedUnlearnError as exc:
        reporter.message(f"the pre-erasure model's metrics were not captured ({exc}); the erasure goes on, "
                         "and `fedunlearn evaluate` will report that model as unavailable")


def erase(run_dir: Path, request: EraseRequest, *, grid: Grid | None = None,
          reporter: Reporter | None = None) -> UnlearnResult:
    """Python API, the bare engine: erase from ``run_dir`` (``grid=None`` unless training is needed).

    Nothing is authorized, logged or certified, so the run's audit log does not cover the new export
    (``fedunlearn verify`` reports it). Use :func:`certified_erase` for the full, auditable path.
    """
    return erase_workflow(grid, RunFolder.open(run_dir), request, reporter)


def certified_erase(run_dir: Path, request: EraseRequest, *, grid: Grid | None = None,
                    signed: SignedRequest | None = None,
                    reporter: Reporter | None = None) -> tuple[UnlearnResult, Certificate]:
    """Python API, what ``fedunlearn forget`` does: check, authorize, erase, log and certify.

    ``signed`` is the subject organization's signed request; without it the coordinator signs
    ``request``. A refused request raises :class:`~fedunlearn.errors.AuthorizationError` (logged) and
    changes nothing; afterwards ``fedunlearn verify --run RUN_DIR`` passes.
    """
    run_dir = Path(run_dir)
    prepare_erasure(run_dir, request)
    authorization = authorize_erasure(run_dir, signed or coordinator_request(run_dir, request))
    result = erase(run_dir, request, grid=grid, reporter=reporter)
    return result, certify_applied_erasure(run_dir, authorization, result)


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


def coordinator_request(run_dir: Path, request: EraseRequest) -> SignedRequest:
    """``request`` signed with the coordinator's key (when no organization brought a signed one)."""
    from fedunlearn.certify import RunAudit, sign_request

    with RunAudit.open(run_dir) as audit:
        return sign_request(audit.signer, run=audit.origin, subjects=request.subjects, method=request.method,
                            records=request.records)


def authorize_erasure(run_dir: Path, signed: SignedRequest) -> Authorization:
    """Check a signed request against the run's enrolled keys; log it (or the refusal) and sign.

    Raises
    ------
    AuthorizationError
        The request is refused (see :func:`fedunlearn.certify.authorize_request`); the refusal is logged.
    """
    from fedunlearn.certify import RunAudit, authorize_request

    with RunAudit.open(run_dir) as audit:
        return authorize_request(audit, signed)


def certify_applied_erasure(run_dir: Path, authorization: Authorization, result: UnlearnResult) -> Certificate:
    """Issue the signed certificate of an applied erasure, whichever path applied it.

    Brings the audit log up to date (the retrained round commits, the new export's file hashes, an
    ``erasure-applied`` event), then signs the certificate, logs it with an inclusion receipt and
    writes it to ``RUN_DIR/certificates/`` (see :func:`fedunlearn.certify.certify_erasure`). Used by
    ``fedunlearn forget`` and by the ServerApp's ``run.workflow = "erase"`` (``flwr run``).
    """
    from fedunlearn.certify import certify_erasure

    return certify_erasure(RunFolder.open(run_dir), authorization, result)


def certified_erasure_workflow(request: EraseRequest) -> Callable[..., UnlearnResult]:
    """Like :func:`erasure_workflow`, but authorized and certified as ``fedunlearn forget`` does.

    Before anything changes, the request is checked (:func:`prepare_erasure`), signed with the
    coordinator's key and authorized (logged); after the erasure the certificate is issued. This is
    the ServerApp's ``run.workflow = "erase"``.
    """
    erase_it = erasure_workflow(request)

    def workflow(grid: Grid, settings: Settings, *, reporter: Reporter | None = None) -> UnlearnResult:
        run_dir = Path(settings.run.dir)
        prepare_erasure(run_dir, request)
        authorization = authorize_erasure(run_dir, coordinator_request(run_dir, request))
        result = erase_it(grid, settings, reporter=reporter)
        certificate = certify_applied_erasure(run_dir, authorization, result)
        (reporter or LogReporter()).message(f"erasure certificate {certificate.path}")
        return result

    return workflow
