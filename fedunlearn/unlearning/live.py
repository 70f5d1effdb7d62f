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
    """Apply every request in the inbox (oldest first) through the erasure service over ``grid``.

    Returns one outcome per request (``state`` applied or refused, ``reason`` or ``certificate``).
    Never raises for a refused request: the refusal is logged and training goes on.
    """
    from fedunlearn.unlearning.service import certified_erase, refuse

    run = RunFolder.open(Path(run_dir))
    reporter = reporter or LogReporter()
    inbox = folder(run.path, "inbox")
    outcomes = []
    for path in sorted(inbox.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if inbox.is_dir() else []:
        doc = json.loads(path.read_text(encoding="utf-8"))
        signed = SignedRequest.parse(doc["signed"])
        outcome: dict[str, Any] = {"request": path.stem, "received": doc["received"]}
        try:
            try:
                request = _erase_request(run, signed)
            except FedUnlearnError as exc:  # never reached the service: log the refusal here
                refuse(run.path, signed, (), str(exc))
                raise
            reporter.message(f"erasure request for {', '.join(request.subjects)} ({request.method}): applying it "
                             "before the next round")
            received = datetime.strptime(doc["received"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            timing = (f"live request: received {doc['received']} ({doc.get('via', 'out of band')}), applied "
                      f"{_stamp(_now())}, deadline {_stamp(received + DEADLINE)}")
            result, certificate = certified_erase(run.path, request, grid=grid, signed=signed, reporter=reporter,
                                                  before=before, notes=(timing,))
            outcome.update(state="applied", applied=_stamp(_now()), certificate=str(certificate.path),
                           method=request.method, served=result.served_hash)
            reporter.message(f"erased {', '.join(request.subjects)}: certificate {certificate.path}")
        except FedUnlearnError as exc:  # the service logged the refusal (or the lines above did)
            outcome.update(state="refused", reason=str(exc))
            reporter.message(f"erasure request {path.stem[:12]} refused: {exc}; training goes on")
        target = folder(run.path, outcome["state"])
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".{path.name}.tmp"
        tmp.write_text(json.dumps({**doc, **outcome}, sort_keys=True), encoding="utf-8")
        os.replace(tmp, target / path.name)
        path.unlink()
        outcomes.append(outcome)
    return outcomes
