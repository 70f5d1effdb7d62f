"""The run's inbox of signed erasure requests, and each organization's outbox on its own side.

An organization hands a signed request to its own node: it writes it to the node's outbox (the
``requests`` node-config entry of its SuperNode, e.g. ``--node-config 'org="lab-c"
requests="/srv/lab-c/outbox"'``; in simulation ``RUN/requests/outbox/<org>/``, the organization's
side simulated on this machine). The ClientApp attaches the oldest one to its next evaluation reply
(Flower's ServerApp pulls; the request rides on a reply, within the Message API), and the
coordinator puts it in the run's inbox (``RUN/requests/inbox/``), where the training applies it
before its next round (:mod:`fedunlearn.unlearning.live`). The coordinator can also queue
requests that arrive out of band (``fedunlearn requests --submit``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedunlearn.certify.authorize import ANSWER_WITHIN, SignedRequest
from fedunlearn.errors import ConfigError
from fedunlearn.runs import RunFolder, utc_now

__all__ = ["DEADLINE", "REPLY_KEY", "STATES", "WARN_AT", "attach_outgoing", "folder", "outbox", "queue", "status", "submit"]

#: Config key of a reply that carries a signed erasure request (its canonical JSON text).
REPLY_KEY = "erasure-request"
#: Folders of ``RUN/requests``: waiting, applied (with certificate), refused (with reason).
STATES = ("inbox", "applied", "refused")
#: How long an organization may wait for its erasure (GDPR Art. 12(3): one month from receipt).
DEADLINE = ANSWER_WITHIN
#: A request waiting longer than this share of the deadline is reported loudly.
WARN_AT = 0.8


def folder(run_dir: str | Path, state: str) -> Path:
    return Path(run_dir) / "requests" / state


def queue(run_dir: str | Path, signed: SignedRequest | bytes | str | Mapping, *, via: str = "out of band") -> Path:
    """Put a signed request in the run's inbox (atomically); ConfigError when unreadable or queued before."""
    request = SignedRequest.parse(signed)
    digest = hashlib.sha256(request.to_json()).hexdigest()
    for state in STATES:
        if (folder(run_dir, state) / f"{digest}.json").exists():
            raise ConfigError(f"this request was already submitted to {str(run_dir)!r} ({state}); sign a new one")
    inbox = folder(run_dir, "inbox")
    inbox.mkdir(parents=True, exist_ok=True)
    doc = {"received": utc_now(), "via": via,
           "signed": request.to_dict()}
    tmp = inbox / f".{digest}.tmp"
    tmp.write_text(json.dumps(doc, sort_keys=True), encoding="utf-8")
    os.replace(tmp, inbox / f"{digest}.json")
    return inbox / f"{digest}.json"


def outbox(node_config: Mapping[str, object], run_dir: str, org: str) -> Path | None:
    """The organization's outbox: its node's ``requests`` entry, else (simulation) under the run."""
    explicit = str(node_config.get("requests", "") or "")
    if explicit:
        return Path(explicit)
    return Path(run_dir) / "requests" / "outbox" / org if run_dir else None


def attach_outgoing(box: Path | None) -> dict[str, str]:
    """The reply config entry for the oldest request in ``box`` (moved to ``box/sent``), or ``{}``."""
    if box is None or not box.is_dir():
        return {}
    waiting = sorted(box.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    if not waiting:
        return {}
    path = waiting[0]
    text = path.read_text(encoding="utf-8")
    sent = box / "sent"
    sent.mkdir(exist_ok=True)
    os.replace(path, sent / path.name)  # handed over once; the coordinator queues it
    return {REPLY_KEY: text}


def submit(run_dir: str | Path, signed: SignedRequest | bytes | str) -> Path:
    """Queue a signed request for the running federation (out of band); return its inbox file.

    Raises ConfigError for an unreadable request (nothing is queued); whether it is authorized is
    decided, and logged, when the training applies it.
    """
    run = RunFolder.open(Path(run_dir))
    return queue(run.path, signed)


def status(run_dir: str | Path, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every request of the run: state, subjects, age, deadline, and ``late`` when past ``WARN_AT``."""
    run = RunFolder.open(Path(run_dir))
    now = now or datetime.now(timezone.utc)
    rows = []
    for state in STATES:
        box = folder(run.path, state)
        for path in sorted(box.glob("*.json")) if box.is_dir() else []:
            doc = json.loads(path.read_text(encoding="utf-8"))
            received = datetime.strptime(doc["received"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            body = doc["signed"]["request"]
            age = now - received
            row = {"request": path.stem, "state": "received" if state == "inbox" else state,
                   "subjects": body.get("subjects"), "method": body.get("method"),
                   "records": len(body.get("records") or []), "received": doc["received"],
                   "deadline": (received + DEADLINE).strftime("%Y-%m-%dT%H:%M:%SZ"), "age_days": round(age.total_seconds() / 86400, 3),
                   "via": doc.get("via", "out of band")}
            row.update({k: doc[k] for k in ("applied", "certificate", "reason") if k in doc})
            row["late"] = state == "inbox" and age >= WARN_AT * DEADLINE
            rows.append(row)
    return rows
