"""``fedunlearn forget``: erase organizations (exact or approximate methods) or some of one's records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from fedunlearn.cli._app import app, console, err_console, fail
from fedunlearn.errors import FedUnlearnError


def _what(request) -> str:
    """What the erasure does, in words (record-level forgetting keeps the organization)."""
    if request.records:
        return (f"{len(request.records)} record(s) of {request.subjects[0]} "
                f"({request.subjects[0]} stays in the federation)")
    return ", ".join(request.subjects)


def _print(result, request) -> None:
    if request.records:
        console.print(f"[bold]forgot[/] {_what(request)} with {result.method} (guarantee: {result.guarantee})")
    else:
        console.print(f"[bold]erased[/] {', '.join(result.subjects)} with {result.method} "
                      f"(guarantee: {result.guarantee})")
    if result.cost.client_steps == 0:
        console.print("  nothing was trained: the served model was rebuilt from stored adapters")
    full = result.full_retrain_cost
    for label, cost in (("this erasure", result.cost),
                        ("full retraining" + (" (estimate)" if full.estimated else ""), full)):
        who = ", ".join(cost.organizations) or "none"
        console.print(f"[bold]{label}[/]: {cost.client_steps} client-steps, {cost.wall_seconds:.2f} s, "
                      f"{cost.rounds} rounds ({cost.aggregations} shard aggregations), {cost.bytes_sent} bytes "
                      f"sent; organizations taking part: {who}" + (f" ({cost.basis})" if cost.estimated else ""))
    for note in result.notes:
        console.print(f"  {note}")
    console.print(f"[bold]served model[/] {result.served_path}  (sha256 {result.served_hash[:16]}…, "
                  f"was {(result.previous_served_hash or '-')[:16]}…)")


def _read_ids(path: Path) -> tuple[str, ...]:
    from fedunlearn.errors import DataError

    try:
        ids = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError as exc:
        raise DataError(f"cannot read the record-id file {str(path)!r}: {exc}; expected one record id per line") from None
    if not ids:
        raise DataError(f"the record-id file {str(path)!r} is empty; expected one record id per line")
    return ids


def _pair(text: str) -> tuple[str, str]:
    from fedunlearn.errors import ConfigError

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--option {text!r} is not KEY=VALUE; e.g. --option damping=0.1")
    return key.strip(), value.strip()


@app.command()
def forget(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    org: list[str] = typer.Option([], "--org", help="Organization to erase (repeat for several); taken from "
                                  "--request when one is given."),
    method: str = typer.Option("sisa", "--method", help="sisa | drop | retrain | influence | subtract | negate; "
                               "with --records: npo | graddiff | ga | sisa (see fedunlearn.unlearning)."),
    records: Path | None = typer.Option(None, "--records", help="File of record ids to forget (one per line; "
                                        "needs exactly one --org, which stays in the federation)."),
    option: list[str] = typer.Option([], "--option", help="Method parameter KEY=VALUE, e.g. damping=0.1 "
                                     "(see fedunlearn.unlearning.ApproxOptions); repeatable."),
    requested_by: str = typer.Option("", "--requested-by", help="Who asked (kept in the run's erasure log)."),
    request_file: Path | None = typer.Option(None, "--request", help="Erasure request signed by the subject's "
                                             "enrolled key or the coordinator's (`fedunlearn keys sign-request`). "
                                             "Without it the coordinator signs the request itself."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    capture_before: bool = typer.Option(True, "--capture-before/--no-capture-before",
                                        help="First evaluate the served model (its aggregates may be purged by the "
                                             "erasure) so that `fedunlearn evaluate` can report 'before'; skipping it "
                                             "makes a drop erasure instant."),
) -> None:
    """Erase organizations from the served model; exact methods retrain through Flower when needed.

    Running the same command again completes an erasure that was interrupted.
    """
    from fedunlearn.progress import RichReporter
    from fedunlearn.runs import RunFolder
    from fedunlearn.unlearning import EraseRequest
    from fedunlearn.unlearning.service import certified_erase

    try:
        RunFolder.open(run)  # a clear error for a folder that is not a run, before any log is created
    except FedUnlearnError as exc:
        fail(exc)
        return
    signed = None
    try:  # reading the request: a malformed one is a refusal too, and logged
        ids: tuple[str, ...] = ()
        if records is not None:
            ids = _read_ids(records)
            method = "sisa-records" if method == "sisa" else method
        opts = dict(_pair(o) for o in option)
        signed = _signed_request(run, request_file, tuple(org), method, ids)
        body = signed.request
        ids = tuple(body.get("records") or ()) or ids
        request = EraseRequest(tuple(body["subjects"]), method=str(body.get("method", method)), records=ids,
                               requested_by=requested_by, options=opts)
    except FedUnlearnError as exc:
        _log_refusal(run, signed, tuple(org), exc)
        fail(exc)
        return
    try:  # progress and notes go to stderr (RichReporter): with --json, stdout stays one document
        result, certificate = certified_erase(run, request, signed=signed, reporter=RichReporter(), simulate=True,
                                              before=_capture_hook() if capture_before else None)
    except FedUnlearnError as exc:
        fail(exc)
        return
    certificate = Path(certificate.path) if getattr(certificate, "path", None) else Path(run) / "certificates"
    if as_json:
        sys.stdout.write(json.dumps({**result.to_dict(), "certificate": str(certificate)}, indent=2) + "\n")
        return
    _print(result, request)
    console.print(f"[bold]certificate[/] {certificate}  (check it: fedunlearn verify --run {run} "
                  f"--certificate {certificate})")


def _signed_request(run: Path, request_file: Path | None, orgs: tuple[str, ...], method: str,
                    records: tuple[str, ...]):
    """The signed request: read from ``--request``, or signed now with the coordinator's key."""
    from fedunlearn.certify import SignedRequest
    from fedunlearn.errors import ConfigError
    from fedunlearn.runs import RunFolder

    RunFolder.open(run)  # a clear error for a folder that is not a run, before any log is created
    if request_file is not None:
        signed = SignedRequest.read(request_file)
        if orgs and sorted(set(orgs)) != sorted(signed.request.get("subjects") or []):
            raise ConfigError(
                f"--org {sorted(set(orgs))} differs from the signed request's subjects "
                f"{signed.request.get('subjects')}; drop --org or pass the matching request"
            )
        if not signed.request.get("subjects"):
            raise ConfigError(f"the request {str(request_file)!r} names no subjects")
        return signed
    if not orgs:
        raise ConfigError("no organization to erase: pass --org NAME or --request FILE")
    from fedunlearn.unlearning.service import coordinator_request
    from fedunlearn.unlearning import EraseRequest

    return coordinator_request(run, EraseRequest(orgs, method=method, records=records))


def _log_refusal(run: Path, signed, orgs: tuple[str, ...], exc: Exception) -> None:
    """Log a request refused while it was read (malformed request file, bad --option ...)."""
    from fedunlearn.unlearning.service import refuse

    subjects = (signed.request.get("subjects") if signed is not None else None) or list(orgs)
    if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
        subjects = []
    try:
        refuse(run, signed, tuple(subjects), str(exc))
    except FedUnlearnError as err:  # the refusal stands; say that it could not be logged
        err_console.print(f"[yellow]warning[/]: the refusal could not be logged: {err}")


def _capture_hook():
    """The pre-erasure evaluation ``forget`` runs by default (the judge, passed in as a hook)."""
    from fedunlearn.evaluate.before import capture_before

    return capture_before
