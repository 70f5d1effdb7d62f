"""The erasure service: every front end's one path from a request to a certified erasure.

:func:`certified_erase` is the service. The CLI (``fedunlearn forget``), the Python API, and the
ServerApp's ``run.workflow = "erase"`` (:func:`certified_erasure_workflow`, ``flwr run`` against a
deployment) all call it, so they cannot drift. It runs, in order:

1. **check** (:func:`prepare_erasure`): nothing changes on a refusal, which is logged;
2. **authorize and log** the signed request (the subject's, or the coordinator's);
3. **erase**: the registered unlearner, journaled, through ``grid`` when it trains, or through
   Flower's simulation engine (:func:`simulate_erasure`) when asked to; rerunning completes an
   interrupted erasure;
4. **certify** (:func:`certify_applied_erasure`).

The judge stays outside the engine: an evaluation of the model before it changes is a hook the
caller passes (``before(run_dir, subjects, *, ledger)``, e.g.
:func:`fedunlearn.evaluate.before.capture_before`, which the CLI passes by default); a failing hook
is reported and never blocks the erasure. :func:`erase` is the bare engine (no authorization, log or
certificate), for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from flwr.serverapp import Grid

from fedunlearn.certify.authorize import Authorization, SignedRequest, log_refusal
from fedunlearn.certify.certificate import Certificate
from fedunlearn.config import Settings
from fedunlearn.ledger import Ledger
from fedunlearn.progress import LogReporter, Reporter
from fedunlearn.runs import RunFolder
from fedunlearn.errors import FedUnlearnError, RunStateError, UnknownNameError
from fedunlearn.unlearning import (UNLEARNERS, EraseRequest, Federation, UnlearnResult, check_request, get_unlearner,
                                   pending_erasure)

__all__ = [
    "BeforeHook",
    "authorize_erasure",
    "certified_erase",
    "certified_erasure_workflow",
    "certify_applied_erasure",
    "check_bound",
    "coordinator_request",
    "erase",
    "erase_workflow",
    "erasure_workflow",
    "prepare_erasure",
    "refuse",
    "simulate_erasure",
]

#: ``before(run_dir, subjects, *, ledger)``: evaluates the served model before an organization-level
#: erasure changes it (e.g. :func:`fedunlearn.evaluate.before.capture_before`).
BeforeHook = Callable[..., object]


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
        validate = getattr(unlearner, "validate", None)  # a method's own refusals (approximate methods)
        if validate is not None and not same:
            validate(request, ledger)
        return unlearner.needs_grid(request, ledger, run)


def erase_workflow(grid: Grid | None, run: RunFolder, request: EraseRequest, reporter: Reporter | None = None,
                   *, before: BeforeHook | None = None) -> UnlearnResult:
    """Erase ``request.subjects`` from ``run`` with the requested method, retraining over ``grid``."""
    unlearner = _unlearner_for(request)
    reporter = reporter or LogReporter()
    with Ledger.open(run.path) as ledger, _audit_of(run) as audit:
        if before is not None and unlearner.level != "record":  # the served model may be purged below
            _run_before(before, run, request, ledger, reporter)
        # replayed rounds go through the audited path of training rounds: DP histories are sent and
        # budget refusals logged (their round commits reach the log when the erasure is certified)
        federation = Federation(run=run, ledger=ledger, grid=grid, reporter=reporter, audit=audit)
        return unlearner.unlearn(request, federation)


@contextlib.contextmanager
def _audit_of(run: RunFolder):
    """The run's audit log, open, when it has one (every run trained by fedunlearn does); else None."""
    from fedunlearn.certify import RunAudit
    from fedunlearn.certify.runaudit import PUBLIC_KEY_FILE

    if not (run.path / PUBLIC_KEY_FILE).is_file():
        yield None
        return
    with RunAudit.open(run.path) as audit:
        yield audit


def _run_before(before: BeforeHook, run: RunFolder, request: EraseRequest, ledger: Ledger, reporter: Reporter) -> None:
    """Run the caller's pre-erasure hook without ever letting it block the erasure.

    An invalid request is refused first, as the erasure itself would refuse it (nothing is evaluated
    for it). A hook that fails is reported and the erasure goes on: the right to erasure does not
    wait on an audit; ``evaluate`` then reports the pre-erasure model as unavailable.
    """
    check_request(request, ledger, resuming=True)  # resumed erasures: the hook finds nothing to do
    try:
        before(run.path, request.subjects, ledger=ledger)
    except FedUnlearnError as exc:
        reporter.message(f"the pre-erasure model's metrics were not captured ({exc}); the erasure goes on, "
                         "and `fedunlearn evaluate` will report that model as unavailable")


def erase(run_dir: Path, request: EraseRequest, *, grid: Grid | None = None,
          reporter: Reporter | None = None, before: BeforeHook | None = None) -> UnlearnResult:
    """Python API, the bare engine: erase from ``run_dir`` (``grid=None`` unless training is needed).

    Nothing is authorized, logged or certified, so the run's audit log does not cover the new export
    (``fedunlearn verify`` reports it). Use :func:`certified_erase` for the full, auditable path.
    """
    return erase_workflow(grid, RunFolder.open(run_dir), request, reporter, before=before)


#: How :func:`simulate_erasure` reaches a simulated consortium's organizations.
ENGINES = ("inprocess", "simulation")


def simulate_erasure(run_dir: Path, request: EraseRequest, *, reporter: Reporter | None = None,
                     discovery_timeout: float = 120.0, before: BeforeHook | None = None,
                     engine: str = "inprocess") -> UnlearnResult:
    """:func:`erase` for a simulated consortium, whose organizations all live on this machine.

    ``engine="inprocess"`` (default) sends the erasure's Flower Messages to the ClientApp in this
    process (:class:`~fedunlearn.federation.inprocess.InProcessGrid`): no Ray start-up, no node
    discovery wait, the same results bit for bit (tested). ``engine="simulation"`` runs Flower's
    simulation engine (Ray) as ``fedunlearn simulate`` does; ``discovery_timeout`` (at least the
    run's own) then covers Ray's start-up while the nodes register. Either way only the remaining
    members of the affected shards get work; a run stopped midway is left as it was before, and the
    same erasure again completes it.
    """
    if engine not in ENGINES:
        raise UnknownNameError("erasure engine", engine, ENGINES)
    prepare_erasure(run_dir, request)  # refuse bad input before anything starts
    settings = RunFolder.open(run_dir).settings
    settings = settings.replace(run={"dir": str(Path(run_dir).resolve()),
                                     "discovery_timeout": max(discovery_timeout, settings.run.discovery_timeout)})
    what = (f"forgetting {len(request.records)} record(s) of {request.subjects[0]} ({request.subjects[0]} stays "
            "in the federation)" if request.records else f"erasing {', '.join(request.subjects)}")
    if engine == "inprocess":
        from fedunlearn.federation.inprocess import inprocess_grid

        (reporter or LogReporter()).message(f"{what}: Flower Messages to the organizations' ClientApps, in this "
                                            "process …")

        return erasure_workflow(request, before=before)(inprocess_grid(settings), settings, reporter=reporter)
    from fedunlearn.federation.simulation import run_apps

    (reporter or LogReporter()).message(f"{what}: Flower's simulation engine …")
    results = run_apps(settings, reporter=reporter, workflow=erasure_workflow(request, before=before))
    if not results:
        raise RunStateError(
            f"the erasure of {list(request.subjects)} from {str(run_dir)!r} did not finish; see the log above. "
            "The served model and ledger are as before (or the erasure is journaled): run the same erasure "
            "again to complete it"
        )
    return results[0]


def check_bound(run_dir: Path) -> None:
    """IntegrityError when the run's ledger or run.json disagree with its signed audit log
    (:mod:`fedunlearn.certify.binding`)."""
    from fedunlearn.certify import RunAudit
    from fedunlearn.certify.binding import check_binding

    with RunAudit.open(run_dir) as audit, Ledger.open(run_dir) as ledger:
        check_binding(audit, ledger)


def refuse(run_dir: Path, signed: SignedRequest | None, subjects: tuple[str, ...], reason: str) -> None:
    """Log a request refused before its signature was checked (unknown subject, malformed request...)."""
    from fedunlearn.certify import RunAudit

    with RunAudit.open(run_dir) as audit:
        log_refusal(audit, signed, subjects, reason)


def certified_erase(run_dir: Path, request: EraseRequest, *, grid: Grid | None = None,
                    signed: SignedRequest | None = None, reporter: Reporter | None = None,
                    before: BeforeHook | None = None, simulate: bool = False,
                    run: RunFolder | None = None, notes: tuple[str, ...] = ()) -> tuple[UnlearnResult, Certificate]:
    """The erasure service (see the module doc): check, authorize and log, erase, certify.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    request : EraseRequest
        What to erase; with ``signed``, what the signed request asks for.
    grid : Grid, optional
        Where the erasure trains, when it trains (a deployment's, the tests' in-process one).
    signed : SignedRequest, optional
        The subject organization's signed request; without it the coordinator signs ``request``.
    reporter, before
        Progress reporting; the pre-erasure hook (:data:`BeforeHook`).
    simulate : bool
        Without ``grid``, run an erasure that trains in Flower's simulation engine.
    run : RunFolder, optional
        ``run_dir`` already opened with operational overrides (the ServerApp's time-outs).
    notes : tuple of str
        Lines added to the result's notes, hence to the signed certificate (e.g. when a live
        request was received and its deadline).

    Returns
    -------
    (UnlearnResult, Certificate)

    Raises
    ------
    AuthorizationError, FedUnlearnError
        A refused request changes nothing and leaves a signed ``refusal`` in the audit log; afterwards
        ``fedunlearn verify --run RUN_DIR`` passes.
    """
    from fedunlearn.unlearning.together import Part, certified_erase_all

    [outcome] = certified_erase_all(Path(run_dir), [Part(request, signed, tuple(notes))], grid=grid,
                                    reporter=reporter, before=before, simulate=simulate, run=run)
    if isinstance(outcome, FedUnlearnError):
        raise outcome
    return outcome


def _with_timeouts(run_dir: Path, settings: Settings) -> RunFolder:
    """The run's own settings, except the operational time-outs of ``settings`` (the ServerApp's)."""
    run = RunFolder.open(run_dir)
    timeouts = {"round_timeout": settings.run.round_timeout, "discovery_timeout": settings.run.discovery_timeout}
    return dataclasses.replace(run, settings=run.settings.replace(run=timeouts))


def erasure_workflow(request: EraseRequest, *, before: BeforeHook | None = None) -> Callable[..., UnlearnResult]:
    """A ServerApp workflow ``(grid, settings, *, reporter) -> UnlearnResult`` erasing ``request``.

    The run folder is ``settings.run.dir``; the run's own settings are used, except for the
    operational time-outs (``run.round-timeout``, ``run.discovery-timeout``) of ``settings``.
    """

    def workflow(grid: Grid, settings: Settings, *, reporter: Reporter | None = None) -> UnlearnResult:
        return erase_workflow(grid, _with_timeouts(Path(settings.run.dir), settings), request, reporter, before=before)

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


def certify_applied_erasure(run_dir: Path, authorization: Authorization, result: UnlearnResult, *,
                            export_index: int | None = None) -> Certificate:
    """Issue the signed certificate of an applied erasure, whichever path applied it.

    Brings the audit log up to date (the retrained round commits, the new export's file hashes, an
    ``erasure-applied`` event), then signs the certificate, logs it with an inclusion receipt and
    writes it to ``RUN_DIR/certificates/`` (see :func:`fedunlearn.certify.certify_erasure`). Used by
    ``fedunlearn forget`` and by the ServerApp's ``run.workflow = "erase"`` (``flwr run``).
    """
    from fedunlearn.certify import certify_erasure

    return certify_erasure(RunFolder.open(run_dir), authorization, result, export_index=export_index)


def certified_erasure_workflow(request: EraseRequest, *, before: BeforeHook | None = None) -> Callable[..., UnlearnResult]:
    """The ServerApp's ``run.workflow = "erase"``: :func:`certified_erase` over the ServerApp's grid,
    the request signed with the coordinator's key."""

    def workflow(grid: Grid, settings: Settings, *, reporter: Reporter | None = None) -> UnlearnResult:
        run_dir = Path(settings.run.dir)
        result, certificate = certified_erase(run_dir, request, grid=grid, reporter=reporter, before=before,
                                              run=_with_timeouts(run_dir, settings))
        (reporter or LogReporter()).message(f"erasure certificate {certificate.path}")
        return result

    return workflow
