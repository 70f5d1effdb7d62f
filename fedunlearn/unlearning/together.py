"""Several erasure requests carried out by one erasure, each with its own certificate.

Requests that arrive together (a live federation's inbox between two rounds) and ask for the same
organization-level method are applied by one erasure over the union of their subjects: the shards
they touch are rolled back and retrained once, not once per request. Each request is still checked,
authorized and logged on its own (an ``erasure-request`` event each, or a ``refusal``), and gets its
own signed certificate naming only its own subjects; the certificates share the erasure's
``models.after`` and cost, and a note in each names the other requests (by digest) it was applied
with. The pending journal (:mod:`fedunlearn.unlearning.pending`) lists every authorization, so a
process killed anywhere in between is completed by a rerun with one certificate per request.

:func:`certified_erase_all` is the service's general form; :func:`~fedunlearn.unlearning.service.certified_erase`
is its one-request case.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from flwr.serverapp import Grid

from fedunlearn import crashpoints
from fedunlearn.certify.authorize import SignedRequest
from fedunlearn.certify.certificate import Certificate
from fedunlearn.errors import ConfigError, FedUnlearnError, RunStateError
from fedunlearn.progress import LogReporter, Reporter
from fedunlearn.runs import RunFolder
from fedunlearn.unlearning.base import EraseRequest, UnlearnResult
from fedunlearn.unlearning.pending import (authorizations_of, clear_pending, is_applied, pending_certification,
                                           recorded_result, same_request, set_pending)

__all__ = ["Part", "certified_erase_all", "union_of"]


@dataclass(frozen=True)
class Part:
    """One request of an erasure: what it asks, its signature (None: the coordinator signs), and
    the lines its certificate adds (e.g. when a live request was received)."""

    request: EraseRequest
    signed: SignedRequest | None = None
    notes: tuple[str, ...] = ()


def union_of(parts: list[Part]) -> EraseRequest:
    """The one erasure carrying out ``parts``: their subjects' union, with their common method.

    Raises
    ------
    ConfigError
        The parts ask for different methods, or a record-level request is batched with another.
    """
    if not parts:
        raise ConfigError("no request to erase")
    first = parts[0].request
    if len(parts) == 1:
        return first
    methods = sorted({p.request.method for p in parts})
    if len(methods) > 1 or any(p.request.records for p in parts):
        raise ConfigError(f"requests asking for different methods ({', '.join(methods)}) or for records cannot be "
                          "carried out by one erasure; apply them one after the other")
    subjects = tuple(dict.fromkeys(s for p in parts for s in p.request.subjects))
    return dataclasses.replace(first, subjects=subjects, requested_by="; ".join(
        dict.fromkeys(p.request.requested_by for p in parts if p.request.requested_by)))


def certified_erase_all(run_dir: Path, parts: list[Part], *, grid: Grid | None = None,
                        reporter: Reporter | None = None, before=None, simulate: bool = False,
                        run: RunFolder | None = None) -> list[tuple[UnlearnResult, Certificate] | FedUnlearnError]:
    """Check, authorize and log every part, erase their union once, certify each part.

    Returns one entry per part, in order: ``(result, certificate)``, or the error that refused it
    (logged as a ``refusal``; the other parts go on). A check of the union that fails (e.g. nobody
    would remain) refuses every part, as :func:`~fedunlearn.unlearning.service.certified_erase`
    refuses one request, and is raised.
    """
    from fedunlearn.unlearning.service import (authorize_erasure, check_bound, coordinator_request, erase_workflow,
                                               prepare_erasure, refuse, simulate_erasure)

    run_dir = Path(run_dir)
    union = union_of(parts)
    pending = pending_certification(run_dir)
    if pending is not None and same_request(pending, union) and is_applied(run_dir, union):
        # an earlier process erased and was killed before its certificates: finish them, nothing else
        (reporter or LogReporter()).message("completing the certification of an erasure that was interrupted")
        return _finish(run_dir, pending, union, parts)
    try:
        needs_flower = prepare_erasure(run_dir, union)  # every check before anything changes
        check_bound(run_dir)  # never erase (or certify "exact") from lineage or settings the log contradicts
    except FedUnlearnError as exc:
        for part in parts:
            refuse(run_dir, part.signed, part.request.subjects, str(exc))
        raise
    outcomes: list[tuple[UnlearnResult, Certificate] | FedUnlearnError | None] = [None] * len(parts)
    if pending is not None and same_request(pending, union):  # authorized (and logged) by the killed process
        authorized = _matched(pending, parts)
    else:
        authorized = []
        for i, part in enumerate(parts):
            try:
                authorization = (_authorized_before(run_dir, part.signed) if part.signed is not None else None) \
                    or authorize_erasure(run_dir, part.signed or coordinator_request(run_dir, part.request))
            except FedUnlearnError as exc:  # logged by the authorization; the others go on
                if len(parts) == 1:
                    raise
                outcomes[i] = exc
                continue
            crashpoints.reached("request.logged")
            authorized.append((i, authorization, part.notes))
        if not authorized:
            return outcomes  # every part refused (and logged)
        union = union_of([parts[i] for i, _, _ in authorized])
        set_pending(run_dir, [a for _, a, _ in authorized], union, notes=[n for _, _, n in authorized])
    crashpoints.reached("erasure.authorized")
    if needs_flower and grid is None and simulate:
        result = simulate_erasure(run_dir, union, reporter=reporter, before=before)
    else:
        result = erase_workflow(grid, run or RunFolder.open(run_dir), union, reporter, before=before)
    crashpoints.reached("erasure.unlearned")
    for i, pair in _certify_each(run_dir, authorized, result, existing={}):
        if i is not None:
            outcomes[i] = pair
    remove_erased_data(run_dir, union.subjects)
    clear_pending(run_dir)
    return _complete(outcomes)


def _authorized_before(run_dir: Path, signed: SignedRequest):
    """The authorization a killed process logged for ``signed`` and never carried out (it died before
    journaling the erasure), or None. Authorizing it again would refuse it as a replay."""
    from fedunlearn.certify import RunAudit
    from fedunlearn.certify.authorize import Authorization

    with RunAudit.open(run_dir) as audit:
        applied = {e.get("request") for _, e in audit.events("erasure-applied")}
        logged = [(i, e) for i, e in audit.events("erasure-request") if e.get("request") == signed.digest]
    if not logged or signed.digest in applied:
        return None
    index, event = logged[-1]
    body = signed.request
    return Authorization(request=signed, subjects=tuple(sorted(body.get("subjects") or ())),
                         method=str(body.get("method", "sisa")), records=tuple(body.get("records") or ()),
                         signer_role=str(event.get("signer")), key_id=str(event.get("key_id")), log_index=index)


def _complete(outcomes: list) -> list:
    return [o if o is not None else RunStateError("this request was not part of the erasure that was completed; "
                                                  "submit it again")
            for o in outcomes]


def _matched(pending: dict, parts: list[Part]) -> list[tuple[int | None, object, tuple[str, ...]]]:
    """The pending journal's authorizations, each with the index of the part that asked for it: by
    signed request, else by subjects (a request the coordinator signs again on a rerun differs in its
    signature and time); None: no part of this call."""
    authorized = []
    left = list(range(len(parts)))
    for authorization, notes in authorizations_of(pending):
        digest = authorization.request.digest
        index = next((i for i in left if parts[i].signed is not None and parts[i].signed.digest == digest), None)
        if index is None:
            index = next((i for i in left if tuple(parts[i].request.subjects) == tuple(authorization.subjects)),
                         None)
        if index is not None:
            left.remove(index)
        authorized.append((index, authorization, (parts[index].notes if index is not None else ()) or notes))
    return authorized


def _certify_each(run_dir: Path, authorized, result: UnlearnResult, *, existing: dict[str, Certificate]):
    """One certificate per authorization (those already written before a kill are returned as they are)."""
    from fedunlearn.unlearning.service import certify_applied_erasure

    digests = [a.request.digest for _, a, _ in authorized]
    export_index = next((c.body["models"]["after"]["export_log_index"] for c in existing.values()), None)
    for i, authorization, notes in authorized:
        others = [d[:16] for d in digests if d != authorization.request.digest]
        together = ((f"applied by one erasure together with {len(others)} other request(s) "
                     f"({', '.join(others)}): the cost and the models are that erasure's",) if others else ())
        mine = dataclasses.replace(result, notes=tuple(result.notes) + tuple(notes) + together)
        certificate = existing.get(authorization.request.digest)
        if certificate is None:  # the certificates of one erasure share its logged export
            certificate = certify_applied_erasure(run_dir, authorization, mine, export_index=export_index)
            crashpoints.reached("certify.written")
        export_index = certificate.body["models"]["after"]["export_log_index"]
        yield i, (mine, certificate)


def _finish(run_dir: Path, pending: dict, union: EraseRequest, parts: list[Part]):
    """Certify the erasure a killed process applied (its recorded result); certificates it had
    already written are returned, not written twice."""
    authorized = _matched(pending, parts)
    digests = {a.request.digest for _, a, _ in authorized}
    existing = {}
    for path in sorted((Path(run_dir) / "certificates").glob("*.json")):
        cert = Certificate.read(path)
        digest = cert.body.get("request", {}).get("hash")
        if digest in digests:
            existing[digest] = cert
    result = recorded_result(run_dir, pending, union)
    outcomes: list = [None] * len(parts)
    for i, pair in _certify_each(run_dir, authorized, result, existing=existing):
        if i is not None:
            outcomes[i] = pair
    remove_erased_data(run_dir, union.subjects)
    clear_pending(run_dir)
    return _complete(outcomes)


def remove_erased_data(run_dir: Path, subjects: tuple[str, ...]) -> None:
    """Delete the records of the erased ``subjects`` that a simulation saved in ``RUN/data`` and log
    it (``data-removed``); idempotent, so a rerun after a kill completes it. Data outside the run
    folder (an organization's own ``data`` folder) is never touched."""
    from fedunlearn.certify import RunAudit
    from fedunlearn.certify.runaudit import PUBLIC_KEY_FILE
    from fedunlearn.data.removal import remove_organization
    from fedunlearn.ledger import Ledger

    run_dir = Path(run_dir)
    if not (run_dir / "data" / "manifest.json").is_file() or not (run_dir / PUBLIC_KEY_FILE).is_file():
        return
    with Ledger.open(run_dir) as ledger:
        erased = [s for s in subjects if ledger.organization(s).status == "erased"]
    if not erased:
        return
    with RunAudit.open(run_dir) as audit:
        logged = {e.get("org") for _, e in audit.events("data-removed")}
        for subject in erased:
            if audit.subject(subject) not in logged:  # logged first: a kill before the deletion is completed by a rerun
                folder = run_dir / "data" / subject
                files = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
                audit.append({"type": "data-removed", "org": audit.subject(subject), "files": files})
                audit.checkpoint()
                crashpoints.reached("data.logged")
            remove_organization(run_dir / "data", subject)
