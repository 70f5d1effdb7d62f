"""Bind the ledger and the run's settings to the signed audit log, and check that they still agree.

The ledger (SQLite) and ``run.json`` decide what an erasure does: which organizations' updates are
in which aggregate, with which weights, and how a shard is retrained. Anyone with file access can
edit them (triggers can be dropped), so what they say is bound to the signed log and re-checked:

* **settings**: a ``run-settings`` event holds the SHA-256 of ``run.json`` (canonical JSON), logged
  when a run's log is first used for training (:func:`bind_settings`);
* **lineage**: every ``round-commit`` event records the checkpoint's shard, round, aggregate and
  parent hashes and each contribution (keyed organization, update hash, weight, examples);
* **statuses**: ``erasure-applied`` events name the organizations erased (keyed).

:func:`binding_problems` lists every disagreement between the files and the log. ``verify``
reports them; the erasure service and a resumed training refuse to act on a run with any
(:func:`check_binding`), so no erasure is certified "exact" from lineage the log contradicts.
Runs made before settings were bound get one line saying what cannot be checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from fedunlearn.audit.canonical import decimal_str
from fedunlearn.errors import IntegrityError, LedgerError

__all__ = ["UNBOUND_SETTINGS", "bind_settings", "binding_problems", "check_binding", "settings_digest",
           "stored_file_problems"]

#: The note for a run whose log has no ``run-settings`` event (made before settings were bound).
UNBOUND_SETTINGS = "run.json: not bound to the log (the run predates settings binding); its settings are not checked"
#: Ledger meta key prefix of an organization's data fingerprint (fedunlearn.federation.coordinator).
_FINGERPRINT = "data-sha256/"


def settings_digest(run_dir: str | Path) -> str:
    """SHA-256 hex of ``run.json`` with sorted keys and no spaces (formatting changes do not count,
    any value does; floats as Python writes them, since the settings hold some)."""
    doc = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def bind_settings(audit: Any) -> bool:
    """Log the run's settings digest once, before its first round commit; return whether it logged.

    A log that already holds round commits but no settings event belongs to a run made before this
    binding existed: binding now would bless whatever ``run.json`` holds today, so it stays unbound
    (and ``verify`` says so).
    """
    events = audit.events()
    kinds = {e.get("type") for _, e in events}
    if "run-settings" in kinds or "round-commit" in kinds:
        return False
    audit.append({"type": "run-settings", "sha256": settings_digest(audit.run_dir)})
    audit.checkpoint()
    return True


def _latest_commits(events: Iterable[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    commits: dict[int, Mapping[str, Any]] = {}
    for event in events:
        if event.get("type") == "round-commit" and isinstance(event.get("checkpoint"), int):
            commits[event["checkpoint"]] = event
    return commits


def binding_problems(run_dir: str | Path, events: list[Mapping[str, Any]], ledger: Any,
                     subject: Callable[[str], str] | None) -> tuple[list[str], list[str]]:
    """Disagreements between ``run.json`` / the ledger and the log's ``events``; and notes.

    ``subject`` maps an organization name to its keyed hash (the run's HMAC secret); without it the
    organizations' identities cannot be compared (a note says so) but everything else is.
    """
    problems: list[str] = []
    notes: list[str] = []
    settings = [e for e in events if e.get("type") == "run-settings"]
    if not settings:
        notes.append(UNBOUND_SETTINGS)
    elif not (Path(run_dir) / "run.json").is_file():
        problems.append("run.json: missing (its sha256 is in the log)")
    elif settings_digest(run_dir) != settings[0].get("sha256"):
        problems.append("run.json: its settings differ from the ones logged when the run was created "
                        f"(sha256 {settings_digest(run_dir)[:16]}... against the logged {str(settings[0].get('sha256'))[:16]}...)")
    if subject is None:
        notes.append("organizations' identities in the ledger not compared with the log: the run's HMAC secret "
                     "is not available here (pass the run's key folder)")
    names = {o.name: o for o in ledger.organizations()}
    keyed = {subject(n): n for n in names} if subject else {}
    for ckpt_id, event in sorted(_latest_commits(events).items()):
        where = f"checkpoint {ckpt_id} (shard {event.get('shard')}, round {event.get('round')})"
        try:
            ckpt = ledger.checkpoint(ckpt_id)
        except LedgerError:  # the ledger never deletes a checkpoint (rolled-back branches stay)
            problems.append(f"ledger {where}: missing, though the log records its commit")
            continue
        parent = ledger.checkpoint(ckpt.parent_id).hash if ckpt.parent_id else None
        if (ckpt.shard, ckpt.round, ckpt.hash, parent) != (event.get("shard"), event.get("round"),
                                                          event.get("aggregate"), event.get("parent")):
            problems.append(f"ledger {where}: shard, round, aggregate or parent differ from the logged round commit")
        updates = list(event.get("updates", []))
        with_examples = bool(updates) and all("examples" in u for u in updates)  # older runs logged none
        logged = sorted(_logged_update(u, subject is not None, with_examples) for u in updates)
        stored = sorted(_stored_update(c, subject, with_examples) for c in ledger.contributions(ckpt_id))
        if logged != stored:
            problems.append(f"ledger {where}: its contributions (organization, update, weight, examples) differ "
                            "from the logged round commit")
    problems += _fingerprint_problems(events, ledger, subject, notes)
    problems += _served_problems(run_dir, events, ledger)
    applied = [e for e in events if e.get("type") == "erasure-applied"]
    requests = {e.get("request"): e for e in events if e.get("type") == "erasure-request"}
    # organizations an erasure removed: not record-level forgetting (the organization stays) nor a
    # certificate that DP training alone bounds its influence (method "dp": nothing was removed)
    erased_logged = {s for e in applied if not (requests.get(e.get("request")) or {}).get("records")
                     and e.get("method") != "dp" for s in e.get("subjects", [])}
    if subject is not None:
        for key in sorted(erased_logged):
            name = keyed.get(key)
            if name is not None and names[name].status != "erased":
                problems.append(f"ledger: organization {name!r} is {names[name].status!r} but the log records its erasure")
        for name, org in sorted(names.items()):  # the bare engine (fedunlearn.unlearning.service.erase) logs
            if org.status == "erased" and subject(name) not in erased_logged:  # nothing: said, not refused
                notes.append(f"ledger: organization {name!r} is marked erased but no certified erasure of it is "
                             "logged (erased with the bare engine?)")
    return problems, notes


def stored_file_problems(run_dir: str | Path, events: list[Mapping[str, Any]], ledger: Any) -> list[str]:
    """What the log says exists but the run folder lacks, or holds beside it.

    Every logged certificate has its file; every stored update of an organization still in the
    run (``ledger.store-updates``) is in the blob store unless a logged compaction deleted it; the
    served folder holds exactly the files its last logged export lists.
    """
    from fedunlearn.certify.certificate import Certificate
    from fedunlearn.ledger.compact import compacted

    run_dir = Path(run_dir)
    problems: list[str] = []
    have = set()
    for path in sorted((run_dir / "certificates").glob("*.json")):
        try:
            have.add(Certificate.read(path).digest)
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the certificate checks
            continue
    for event in events:
        if event.get("type") == "certificate" and event.get("certificate") not in have:
            problems.append(f"certificate {str(event.get('certificate'))[:16]}...: logged but its file is missing "
                            "from certificates/")
    settings = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("settings", {}) \
        if (run_dir / "run.json").is_file() else {}
    if settings.get("ledger.store-updates", True):
        gone = compacted(ledger)["update"]
        active = {o.name for o in ledger.organizations() if o.status == "active"}
        for ckpt_id in sorted({c for e in events if e.get("type") == "round-commit" for c in [e.get("checkpoint")]
                               if isinstance(c, int)}):
            try:
                contributions = ledger.contributions(ckpt_id)
            except LedgerError:
                continue  # reported by the lineage check
            for c in contributions:
                if c.org in active and c.update_hash not in gone and not ledger.has_state(c.update_hash, org=c.org):
                    problems.append(f"stored update {c.update_hash[:16]}... of {c.org!r} (checkpoint {ckpt_id}) is "
                                    "missing, and no logged compaction deleted it")
    exports = [e for e in events if e.get("type") == "export"]
    if exports:
        listed = set(exports[-1].get("files", {}))
        for folder in ("export/served",):
            base = run_dir / folder
            for path in sorted(base.rglob("*")) if base.is_dir() else []:
                rel = path.relative_to(run_dir).as_posix()
                if path.is_file() and rel not in listed:
                    problems.append(f"artifact {rel}: in the served folder but not in the logged export")
    return problems


def _logged_update(update: Mapping[str, Any], with_org: bool, with_examples: bool) -> tuple:
    return (update.get("org") if with_org else "", update.get("update"), update.get("weight"),
            update.get("examples") if with_examples else None)


def _stored_update(contribution: Any, subject: Callable[[str], str] | None, with_examples: bool) -> tuple:
    return (subject(contribution.org) if subject else "", contribution.update_hash,
            decimal_str(contribution.weight, 12), contribution.num_examples if with_examples else None)


def logged_fingerprints(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Keyed organization hash -> its data fingerprint as first logged (the one that binds)."""
    first: dict[str, str] = {}
    for e in events:
        if e.get("type") == "data-fingerprint":
            first.setdefault(str(e.get("org")), str(e.get("sha256")))
    return first


def _fingerprint_problems(events: list[Mapping[str, Any]], ledger: Any, subject: Callable[[str], str] | None,
                         notes: list[str]) -> list[str]:
    """The ledger's ``data-sha256/<org>`` (what retraining must present) against the first logged ones."""
    logged = logged_fingerprints(events)
    stored = {k.removeprefix(_FINGERPRINT): v for k, v in ledger.meta.items() if k.startswith(_FINGERPRINT)}
    if subject is None or not (stored or logged):
        return []
    problems, unbound = [], []
    for name in sorted({o.name for o in ledger.organizations()}):
        want, value = logged.get(subject(name)), stored.get(name)
        if want is None and value is not None:
            unbound.append(name)
        elif want is not None and value is None:
            problems.append(f"ledger meta {_FINGERPRINT}{name}: missing, though the log records {name!r}'s data "
                            f"fingerprint ({want[:16]}...)")
        elif want is not None and want != value:
            problems.append(f"ledger meta {_FINGERPRINT}{name}: {str(value)[:16]}... differs from the data fingerprint "
                            f"logged when {name!r} first connected ({want[:16]}...)")
    for key, sha in sorted(logged.items()):
        events_for = {str(e.get("sha256")) for e in events if e.get("type") == "data-fingerprint" and e.get("org") == key}
        if len(events_for) > 1:
            problems.append(f"audit log: organization {key[:16]}... has {len(events_for)} different data fingerprints "
                            f"logged; the first ({sha[:16]}...) binds")
    if unbound:
        notes.append(f"ledger: data fingerprints of {', '.join(unbound)} not in the log (a run made before they "
                     "were logged): not compared")
    return problems


def _served_problems(run_dir: str | Path, events: list[Mapping[str, Any]], ledger: Any) -> list[str]:
    """The ledger's served model (components, weights) against the logged export's manifest."""
    from fedunlearn.certify.runaudit import file_sha256

    exports = [e for e in events if e.get("type") == "export"]
    served = ledger.served()
    manifest_rel = "export/served/fedunlearn.json"
    if not exports or served is None or manifest_rel not in exports[-1].get("files", {}):
        return []
    path = Path(run_dir) / manifest_rel
    if not path.is_file() or file_sha256(path) != exports[-1]["files"][manifest_rel]:
        return []  # named by the artifact check
    manifest = json.loads(path.read_text(encoding="utf-8"))
    logged = [(c.get("checkpoint"), str(c.get("weight"))) for c in manifest.get("components", [])]
    stored = [(int(c), str(float(w))) for c, w in zip(served["components"], served["weights"])]
    if logged != stored:
        return ["ledger: the served model's components or weights differ from the logged export's manifest "
                f"({manifest_rel})"]
    return []


def check_binding(audit: Any, ledger: Any) -> None:
    """Refuse (IntegrityError) a run whose ledger or settings disagree with its signed log."""
    events = [e for _, e in audit.events()]
    problems, _ = binding_problems(audit.run_dir, events, ledger, audit.subject)
    if problems:
        raise IntegrityError(
            f"run {str(audit.run_dir)!r}: the ledger or run.json disagree with the signed audit log, so nothing "
            "is done with them: " + "; ".join(problems) + ". Restore the run folder from a backup "
            "(`fedunlearn verify --run RUN` lists every disagreement)"
        )
