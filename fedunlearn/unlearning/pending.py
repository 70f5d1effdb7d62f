"""An erasure applied but not yet certified: what a rerun needs to certify it (crash consistency).

:func:`~fedunlearn.unlearning.service.certified_erase` records the authorized request in the ledger
(:data:`PENDING_KEY`) before it erases and clears it once the certificate is written. A process
killed in between leaves the mark; the same request again then completes the work instead of
being refused as "already erased": it certifies the erasure with the result the killed process
recorded (``erasures.jsonl``), or returns the certificate it had already written.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedunlearn.certify.authorize import Authorization, SignedRequest
from fedunlearn.ledger import Ledger
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning import EraseRequest, UnlearnResult, get_unlearner, pending_erasure
from fedunlearn.unlearning.base import Cost

__all__ = ["PENDING_KEY", "authorization_of", "authorizations_of", "clear_pending", "is_applied",
           "pending_certification", "recorded_result", "same_request", "set_pending"]

#: Ledger meta key: the authorized request whose erasure is not certified yet (cleared once it is).
PENDING_KEY = "certification.pending"


def pending_certification(run_dir: Path) -> dict | None:
    with Ledger.open(run_dir) as ledger:
        text = ledger.meta.get(PENDING_KEY, "")
    return json.loads(text) if text else None


def _authorization_doc(authorization: Authorization, notes: tuple[str, ...] = ()) -> dict:
    return {"signed": authorization.request.to_dict(), "signer_role": authorization.signer_role,
            "key_id": authorization.key_id, "log_index": authorization.log_index,
            "subjects": list(authorization.subjects), "method": authorization.method,
            "records": list(authorization.records), "notes": list(notes)}


def set_pending(run_dir: Path, authorization: Authorization | list[Authorization], request: EraseRequest,
                *, notes: list[tuple[str, ...]] | None = None) -> None:
    """Record ``request`` as applied-but-uncertified, with every authorization it carries out.

    Several authorizations: one erasure carries out several requests (their subjects' union is
    ``request``); each gets its own certificate, and ``notes`` (one tuple per authorization) are the
    lines each certificate adds, kept so that a rerun after a kill certifies with them.
    """
    authorizations = authorization if isinstance(authorization, list) else [authorization]
    notes = notes or [() for _ in authorizations]
    first = authorizations[0]
    with Ledger.open(run_dir) as ledger:
        doc = {"subjects": list(request.subjects), "method": request.method, "records": list(request.records),
               "signed": first.request.to_dict(), "signer_role": first.signer_role,
               "key_id": first.key_id, "log_index": first.log_index,
               "parts": [_authorization_doc(a, tuple(n)) for a, n in zip(authorizations, notes)],
               "previous_served": (ledger.served() or {}).get("served_hash")}
        ledger.set_meta(PENDING_KEY, json.dumps(doc, sort_keys=True))


def clear_pending(run_dir: Path) -> None:
    with Ledger.open(run_dir) as ledger:
        ledger.set_meta(PENDING_KEY, "")


def same_request(pending: dict, request: EraseRequest) -> bool:
    return (pending["subjects"], pending["method"], pending["records"]) == (
        list(request.subjects), request.method, list(request.records))


def authorization_of(pending: dict) -> Authorization:
    """The (first) authorization the pending erasure carries out."""
    return authorizations_of(pending)[0][0]


def authorizations_of(pending: dict) -> list[tuple[Authorization, tuple[str, ...]]]:
    """Every authorization the pending erasure carries out, with its certificate's extra notes
    (a journal written before erasures could carry several holds one, without notes)."""
    parts = pending.get("parts") or [{**pending, "notes": []}]
    return [(Authorization(request=SignedRequest.parse(p["signed"]), subjects=tuple(p["subjects"]),
                           method=p["method"], records=tuple(p["records"]), signer_role=p["signer_role"],
                           key_id=p["key_id"], log_index=int(p["log_index"])), tuple(p.get("notes", ())))
            for p in parts]


def is_applied(run_dir: Path, request: EraseRequest) -> bool:
    """Whether the erasure is applied in the ledger (and no unlearner journal is left to complete)."""
    with Ledger.open(run_dir) as ledger:
        if pending_erasure(ledger) is not None:
            return False
        if request.records:
            from fedunlearn.federation.coordinator import forgotten_records

            return set(request.records) <= set(forgotten_records(ledger, request.subjects[0]))
        return all(ledger.organization(s).status == "erased" for s in request.subjects)


def recorded_result(run_dir: Path, pending: dict, request: EraseRequest) -> UnlearnResult:
    """The result the killed process recorded in ``erasures.jsonl``; if it died before that line, what
    the ledger shows, with the cost said to be unmeasured (never a made-up figure)."""
    rows = []
    log = Path(run_dir) / "erasures.jsonl"
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    mine = [r for r in rows if r.get("subjects") == list(request.subjects) and r.get("method") == request.method]
    with Ledger.open(run_dir) as ledger:
        served = ledger.served()
        heads = {s: ledger.head(s).hash for s in range(RunFolder.open(run_dir).settings.topology.shards)}
    if mine and mine[-1].get("served_hash") == served["served_hash"]:
        row = mine[-1]
        cost = Cost(**{**row["cost"], "organizations": tuple(row["cost"].get("organizations", ()))})
        full = Cost(**{**row["full_retrain_cost"], "organizations": tuple(row["full_retrain_cost"].get("organizations", ()))})
        notes = tuple(row.get("notes", ())) + ("certified by a rerun: the erasing process was stopped before it "
                                               "certified",)
        guarantee = row["guarantee"]
    else:
        unmeasured = Cost(basis="not measured: the erasing process was stopped before it recorded its cost")
        cost, full = unmeasured, unmeasured
        notes = ("certified by a rerun: the erasing process was stopped before it recorded its result",)
        guarantee = get_unlearner(request.method).guarantee
    return UnlearnResult(method=request.method, subjects=request.subjects, guarantee=guarantee,
                         served_hash=served["served_hash"], served_path=Path(run_dir) / "export" / "served",
                         previous_served_hash=pending.get("previous_served"), heads=heads, recomputed={},
                         organizations=cost.organizations, cost=cost, full_retrain_cost=full, notes=notes)
