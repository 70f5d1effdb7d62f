"""Erasure requests honored inside a running federation, at round boundaries.

A signed request (:func:`~fedunlearn.certify.sign_request`, the subject's key or the
coordinator's) reaches the run's inbox, ``RUN/requests/inbox/``, from the organization's own node
(its outbox, carried by its next evaluation reply: :mod:`fedunlearn.federation.inbox`) or out of
band (:func:`submit`; ``fedunlearn requests --run RUN --submit FILE``). The training workflow calls :func:`apply_pending` before
every round, once when it starts or resumes and once after its last round: each waiting request goes through the erasure
service (:func:`~fedunlearn.unlearning.service.certified_erase`: checked, authorized and logged
with its deadline, erased with the request's method or the run's ``run.erase-method``, certified)
over the training's own grid; the affected shard is rolled back and retrained, and training goes on
with the remaining organizations. A refused request (unknown or already erased organization, bad
signature, replay, expired) is logged by the service and set aside; training goes on.

A process killed during a live erasure leaves the request in the inbox and the previous served
model in service (the erasure is journaled, its certification marked pending); the restarted
training completes it before its next round.

:func:`status` (:mod:`fedunlearn.federation.inbox`, light enough for a quick ``fedunlearn requests``) lists requests with their state (``received``, ``refused``, ``applied``), age and
deadline (one month after receipt, GDPR Art. 12(3)), and flags those close to it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from fedunlearn.certify.authorize import SignedRequest
from fedunlearn.errors import ConfigError, FedUnlearnError
from fedunlearn.federation.inbox import DEADLINE, WARN_AT, folder, status, submit
from fedunlearn.progress import LogReporter, Reporter
from fedunlearn.runs import RunFolder

__all__ = ["DEADLINE", "WARN_AT", "apply_pending", "status", "submit"]  # status, submit: from the inbox



def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _erase_request(run: RunFolder, signed: SignedRequest):
    from fedunlearn.unlearning import EraseRequest

    body = signed.request
    subjects = body.get("subjects")
    if not isinstance(subjects, list) or not subjects:
        raise ConfigError("the request names no subjects")
    records = tuple(body.get("records") or ())
    method = str(body.get("method") or run.settings.run.erase_method)
    if records and method == "sisa":
        method = "sisa-records"
    return EraseRequest(tuple(subjects), method=method, records=records, requested_by="live request")


def apply_pending(run_dir: str | Path, grid: Grid, *, reporter: Reporter | None = None,
                  before: Any = None) -> list[dict[str, Any]]:
    """Apply every request in the inbox through the erasure service over ``grid``.

    Requests asking for the same organization-level method are carried out by one erasure over
    their subjects' union (:mod:`fedunlearn.unlearning.together`: each is authorized and logged on
    its own and gets its own certificate); record-level requests, a request naming an organization
    another one in the inbox already names, and any group whose union the run refuses are applied
    one after the other, oldest first. Returns one outcome per request (``state`` applied or
    refused, ``reason`` or ``certificate``). Never raises for a refused request: the refusal is
    logged and training goes on.
    """
    from fedunlearn.unlearning.service import refuse

    run = RunFolder.open(Path(run_dir))
    reporter = reporter or LogReporter()
    inbox = folder(run.path, "inbox")
    waiting = []
    for path in sorted(inbox.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if inbox.is_dir() else []:
        doc = json.loads(path.read_text(encoding="utf-8"))
        signed = SignedRequest.parse(doc["signed"])
        try:
            request = _erase_request(run, signed)
        except FedUnlearnError as exc:  # never reached the service: log the refusal here
            refuse(run.path, signed, (), str(exc))
            _file(run, path, doc, {"state": "refused", "reason": str(exc)}, reporter)
            continue
        received = datetime.strptime(doc["received"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        waiting.append((path, doc, request, signed, received))
    outcomes = []
    for group in _groups(run, waiting):
        outcomes += _apply(run, group, grid, reporter, before)
    return outcomes


def _groups(run: RunFolder, waiting: list) -> list[list]:
    """Requests carried out together: the ones a killed process was erasing (completed first, as the
    pending journal lists them), then per organization-level method the requests the run accepts
    (each checked alone, then their union, without changing anything) and that name no organization
    twice; every other request alone, to be applied or refused on its own."""
    from fedunlearn.unlearning.pending import authorizations_of, pending_certification
    from fedunlearn.unlearning.together import Part, union_of

    order = {id(item): i for i, item in enumerate(waiting)}
    groups, alone, first = [], [], []
    pending = pending_certification(run.path)
    if pending is not None:
        digests = {a.request.digest for a, _ in authorizations_of(pending)}
        interrupted = [item for item in waiting if item[3].digest in digests]
        if interrupted:
            first = [interrupted]
            waiting = [item for item in waiting if item[3].digest not in digests]
    together: dict[str, list] = {}
    for item in waiting:
        request = item[2]
        group = together.setdefault(request.method, [])
        named = {s for other in group for s in other[2].subjects}
        if request.records or named & set(request.subjects) or not _accepted(run, request):
            alone.append([item])
        else:
            group.append(item)
    for group in together.values():
        if len(group) > 1 and not _accepted(run, union_of([Part(item[2]) for item in group])):
            alone += [[item] for item in group]  # e.g. their union would leave nobody: one by one
        elif group:
            groups.append(group)
    return first + sorted(groups + alone, key=lambda g: min(order[id(item)] for item in g))


def _accepted(run: RunFolder, request) -> bool:
    from fedunlearn.unlearning.service import prepare_erasure

    try:
        prepare_erasure(run.path, request)
    except FedUnlearnError:
        return False
    return True


def _apply(run: RunFolder, group: list, grid: Grid, reporter: Reporter, before: Any) -> list[dict[str, Any]]:
    """One erasure carrying out ``group``'s requests; file each as applied or refused."""
    from fedunlearn.unlearning.together import Part, certified_erase_all

    subjects = sorted({s for item in group for s in item[2].subjects})
    method = group[0][2].method
    reporter.message(f"erasure request{'s' if len(group) > 1 else ''} for {', '.join(subjects)} ({method}): "
                     f"applying {'them in one erasure' if len(group) > 1 else 'it'} before the next round")
    applied = _now()
    parts = [Part(request, signed, (f"live request: received {doc['received']} ({doc.get('via', 'out of band')}), "
                                    f"applied {_stamp(applied)}, deadline {_stamp(received + DEADLINE)}",))
             for _, doc, request, signed, received in group]
    try:
        results = certified_erase_all(run.path, parts, grid=grid, reporter=reporter, before=before)
    except FedUnlearnError as exc:
        from fedunlearn.unlearning.pending import pending_certification

        if pending_certification(run.path) is not None:  # authorized and journaled: a failure, not a refusal
            reporter.message(f"the erasure for {', '.join(subjects)} failed after it was authorized ({exc}); the "
                             "request(s) stay in the inbox and the erasure is completed when training resumes")
            raise
        results = [exc] * len(group)  # refused as a whole (the service logged a refusal for each)
    outcomes = []
    for (path, doc, request, _, _), result in zip(group, results):
        if isinstance(result, FedUnlearnError):
            outcome = {"state": "refused", "reason": str(result)}
        else:
            erased, certificate = result
            outcome = {"state": "applied", "applied": _stamp(_now()), "certificate": str(certificate.path),
                       "method": request.method, "served": erased.served_hash}
            reporter.message(f"erased {', '.join(request.subjects)}: certificate {certificate.path}")
        outcomes.append(_file(run, path, doc, outcome, reporter))
    return outcomes


def _file(run: RunFolder, path: Path, doc: dict, outcome: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Move the request from the inbox to ``applied/`` or ``refused/`` with its outcome."""
    outcome = {"request": path.stem, "received": doc["received"], **outcome}
    if outcome["state"] == "refused":
        reporter.message(f"erasure request {path.stem[:12]} refused: {outcome['reason']}; training goes on")
    target = folder(run.path, outcome["state"])
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".{path.name}.tmp"
    tmp.write_text(json.dumps({**doc, **outcome}, sort_keys=True), encoding="utf-8")
    os.replace(tmp, target / path.name)
    path.unlink()
    return outcome
