"""Erasure certificates: canonical JSON, Ed25519-signed, in the audit log with a receipt.

A certificate file is canonical JSON (RFC 8785, decimals as strings) with three members::

    certificate   the signed body: run, subjects (keyed hashes), request, method, guarantee,
                  models before/after (hashes, exported file hashes), cost vs full retraining,
                  evaluation results, tool versions, issue time
    signature     {"vkey": coordinator's C2SP verifier key, "sig": base64 Ed25519 signature over
                  b"fedunlearn erasure certificate v1\\n" || canonical_json(certificate)}
    receipt       {"index", "tree_size", "proof": [base64], "checkpoint": signed note}: the
                  ``certificate`` event (holding SHA-256 of the body) is leaf ``index`` of the
                  tree the signed checkpoint commits to

Because the file must equal the canonical serialisation of what it holds, any one-byte change
makes it fail verification.

Guarantees, never overstated:

``exact``      the ledger shows that no component of the served model has a subject's
               contribution anywhere in its lineage (checked here, not taken from the unlearner);
``certified``  client-level DP-FedAvg: the served model is (ε, δ)-indistinguishable from one
               trained without the subject ("DP implies unlearning"); ε and δ come from the
               subject's accountant history in the audit log; the assumptions are listed;
``empirical``  no formal bound: whatever the evaluation suite measured.
"""

from __future__ import annotations

import contextlib

import base64
import os
import hashlib
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from fedunlearn import crashpoints
from fedunlearn import __version__
from fedunlearn.audit import canonical_json, decimal_str, parse_canonical_json
from fedunlearn.certify.budget import client_history
from fedunlearn.certify.accounting import account
from fedunlearn.errors import ConfigError, IntegrityError, RunStateError

__all__ = [
    "CERTIFICATE_FORMAT",
    "DP_ASSUMPTIONS",
    "Certificate",
    "certificate_summary",
    "certify_erasure",
    "served_lineage_orgs",
    "signed_message",
]

CERTIFICATE_FORMAT = "fedunlearn-certificate/1"
_DOMAIN = b"fedunlearn erasure certificate v1\n"

DP_ASSUMPTIONS = (
    "client-level add/remove-one-organization adjacency; the subject's data influenced the model only "
    "through its clipped update deltas",
    "each eligible organization was sampled independently with the stated probability, and the sample "
    "stayed secret from the adversary (the ledger and audit log, which record who was sampled, are not public)",
    "Gaussian noise of std z*C was added to the sum of clipped deltas every round; the sample and the noise were "
    "drawn from the run's secret DP key (HMAC-SHA256 per organization and round; torch's noise generator, seeded "
    "with 63 keyed bits, is not a CSPRNG), which never left the coordinator",
    "ε counts every logged round in which the subject was eligible (PRV accountant; RDP given as a cross-check)",
    "(ε, δ)-DP of the training implies the served model is (ε, δ)-close to one trained without the subject; "
    "this is not a proof that the subject's influence is zero",
)


def signed_message(body: Mapping[str, Any]) -> bytes:
    """The bytes the certificate signature covers."""
    return _DOMAIN + canonical_json(body)


def _jsonable(value: Any) -> Any:
    """Floats become decimal strings, tuples lists, paths strings: canonical-JSON ready."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return decimal_str(value, 12) if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    raise ConfigError(f"cannot put {type(value).__name__} {value!r:.60} into a certificate: use numbers, "
                      "strings, lists or mappings")


def _field(result: Any, name: str, default: Any = None) -> Any:
    if isinstance(result, Mapping):
        return result.get(name, default)
    return getattr(result, name, default)


def _versions() -> dict[str, str]:
    out = {"fedunlearn": __version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "flwr", "opacus", "cryptography"):
        with contextlib.suppress(metadata.PackageNotFoundError):  # not installed: not listed
            out[dist] = metadata.version(dist)
    return out


@dataclass(frozen=True)
class Certificate:
    """A signed erasure certificate and its inclusion receipt."""

    body: dict[str, Any]
    signature: dict[str, str]
    receipt: dict[str, Any]
    path: Path | None = None

    @property
    def digest(self) -> str:
        """SHA-256 hex of the canonical body: what the log's ``certificate`` event holds."""
        return hashlib.sha256(canonical_json(self.body)).hexdigest()

    def to_bytes(self) -> bytes:
        return canonical_json({"certificate": self.body, "signature": self.signature, "receipt": self.receipt})

    @classmethod
    def from_bytes(cls, data: bytes, path: Path | None = None) -> Certificate:
        """Parse a certificate file; IntegrityError unless it is exactly canonical JSON."""
        try:
            doc = parse_canonical_json(data.rstrip(b"\n"))
        except (IntegrityError, ConfigError, ValueError) as exc:
            raise IntegrityError(f"certificate {path or ''} is not canonical JSON: {exc}") from exc
        if not isinstance(doc, dict) or set(doc) != {"certificate", "signature", "receipt"}:
            raise IntegrityError(f"certificate {path or ''} must hold exactly certificate, signature and receipt")
        if canonical_json(doc) != data.rstrip(b"\n") or data.count(b"\n") > 1:
            raise IntegrityError(f"certificate {path or ''} is not byte-for-byte canonical JSON: it was edited")
        return cls(doc["certificate"], doc["signature"], doc["receipt"], path)

    @classmethod
    def read(cls, path: str | Path) -> Certificate:
        path = Path(path)
        try:
            return cls.from_bytes(path.read_bytes(), path)
        except OSError as exc:
            raise ConfigError(f"cannot read certificate {str(path)!r}: {exc}") from exc


def served_lineage_orgs(ledger: Any) -> set[str]:
    """Every organization with a contribution anywhere in the lineage of the served components."""
    served = ledger.served()
    if served is None:
        raise RunStateError("the run has no served model recorded: export it before certifying")
    orgs: set[str] = set()
    for checkpoint_id in served["components"]:
        node = ledger.checkpoint(checkpoint_id)
        while node is not None:
            orgs.update(c.org for c in ledger.contributions(node.id))
            node = ledger.checkpoint(node.parent_id) if node.parent_id else None
    return orgs


def _guarantee(kind: str, audit: Any, ledger: Any, settings: Any, subjects: tuple[str, ...]) -> dict[str, Any]:
    if kind == "exact":
        present = served_lineage_orgs(ledger) & set(subjects)
        if present:
            raise RunStateError(
                f"the result claims an exact erasure but the served model's lineage still holds "
                f"{len(present)} subject(s)' contributions; re-export after the erasure or certify it "
                "as 'empirical'"
            )
        return {"kind": "exact", "statement": "no component of the served model has a contribution of the "
                "subject anywhere in its lineage (ledger query over every served component's parent chain)",
                "assumptions": ["the ledger records every update that entered an aggregate",
                                "training is local to each shard: no information crosses shards"]}
    if kind == "certified":
        dp = settings.dp
        if not dp.client_level:
            raise RunStateError("a 'certified' guarantee here needs client-level DP training (dp.client-level = "
                                "true); this run had none: certify it as 'exact' or 'empirical'")
        events = audit.events("round-commit")
        accounts = {}
        for s in subjects:
            history = client_history(events, audit.subject(s))
            if not history:
                raise RunStateError("no logged client-level DP round covers a subject; cannot certify (ε, δ)")
            accounts[audit.subject(s)] = account(history, dp.delta)
        worst = max(accounts.values(), key=lambda r: r.epsilon)
        return {
            "kind": "certified", "epsilon": decimal_str(worst.epsilon, 6), "delta": decimal_str(worst.delta, 6),
            "statement": "the served model is (ε, δ)-indistinguishable from a model trained without the subject "
                         "(client-level DP-FedAvg, McMahan et al. 2018)",
            "assumptions": list(DP_ASSUMPTIONS),
            "accountant": {
                "name": "opacus-prv", "cross_check": "opacus-rdp",
                "per_subject": {h: {"epsilon": decimal_str(r.epsilon, 6), "epsilon_rdp": decimal_str(r.epsilon_rdp, 6),
                                    "history": [[decimal_str(z, 12), decimal_str(q, 12), n] for z, q, n in r.history]}
                                for h, r in sorted(accounts.items())},
                "mechanism": {"z": decimal_str(dp.client_noise_multiplier, 12), "q": decimal_str(dp.client_sample_rate, 12),
                              "clip": decimal_str(dp.client_clip, 12)},
            },
        }
    if kind == "empirical":
        return {"kind": "empirical", "statement": "no formal bound: see the evaluation results", "assumptions": []}
    raise ConfigError(f"guarantee {kind!r}: expected 'exact', 'certified' or 'empirical'")


def certify_erasure(
    run: Any,
    request: Any,
    result: Any,
    *,
    ledger: Any = None,
    audit: Any = None,
    evaluation: Mapping[str, Any] | None = None,
    export_index: int | None = None,
) -> Certificate:
    """Issue, sign, log and write the certificate of an applied erasure.

    Parameters
    ----------
    run : RunFolder
    request : Authorization
        From :func:`~fedunlearn.certify.authorize_request` (the erasure it authorized).
    result : UnlearnResult or Mapping
        Fields read: ``method``, ``guarantee`` (exact | certified | empirical), ``served_hash``,
        ``previous_served_hash``, ``heads`` (shard -> hash), ``cost``, ``full_retrain_cost``
        (mappings or objects with ``to_dict()``; ``client_steps`` and ``wall_seconds`` used for the
        ratio), ``notes``.
    ledger : Ledger, optional
        The ledger after the erasure (heads switched, served model exported and recorded);
        opened from the run folder when omitted.
    audit : RunAudit, optional
        The run's audit log (its coordinator key signs); opened from the run folder when omitted.
    evaluation : mapping, optional
        Whatever the evaluation suite measured (floats are written as decimal strings).
    export_index : int, optional
        The log index of an ``export`` event of this served model already logged for this erasure
        (one erasure carrying out several requests: their certificates share it); by default the
        export is logged now.

    Returns
    -------
    Certificate
        Also written to ``RUN_DIR/certificates/<index>-<digest>.json``.

    Raises
    ------
    RunStateError
        If the claimed guarantee does not hold (e.g. ``exact`` while the served lineage still
        holds a subject), or the served model in the ledger is not the result's.
    """
    from fedunlearn.certify.runaudit import RunAudit
    from fedunlearn.ledger import Ledger

    own_audit, own_ledger = audit is None, ledger is None
    audit = RunAudit.open(run.path) if own_audit else audit
    ledger = Ledger.open(run.path) if own_ledger else ledger
    try:
        return _certify(run, request, result, ledger, audit, evaluation, export_index)
    finally:
        if own_audit:
            audit.close()
        if own_ledger:
            ledger.close()


def _certify(run: Any, authorization: Any, result: Any, ledger: Any, audit: Any,
             evaluation: Mapping[str, Any] | None, export_index: int | None = None) -> Certificate:
    subjects = tuple(authorization.subjects)
    served = ledger.served()
    if served is None or served["served_hash"] != _field(result, "served_hash"):
        raise RunStateError("the ledger's served model is not the erasure result's: export and record the new "
                            "served model (fedunlearn.federation.serving.export_served) before certifying")
    audit.sync(ledger, run.settings.dp)  # rounds the erasure committed
    guarantee = _guarantee(str(_field(result, "guarantee")), audit, ledger, run.settings, subjects)
    # a process killed after logging this erasure's events, before its certificate: reuse them
    prior = [i for i, e in audit.events("erasure-applied")
             if e.get("request") == authorization.request.digest and e.get("after") == served["served_hash"]]
    if prior and export_index is None:
        exports = [i for i, e in audit.events("export") if e.get("served_hash") == served["served_hash"] and i < prior[-1]]
        export_index = exports[-1] if exports else None
    logged = parse_canonical_json(audit.log.entries(export_index, export_index + 1)[0]) \
        if export_index is not None else {}
    if logged.get("type") != "export" or logged.get("served_hash") != served["served_hash"]:
        folders = [run.served_dir] + sorted(p for p in (run.path / "export").glob("shard-*") if p.is_dir())
        export_index = audit.log_export(served["served_hash"], folders)
        logged = parse_canonical_json(audit.log.entries(export_index, export_index + 1)[0])
    files = logged["files"]
    cost = _jsonable(_field(result, "cost") or {})
    full = _jsonable(_field(result, "full_retrain_cost") or {})
    for c in (cost, full):
        if isinstance(c, dict) and "organizations" in c:
            c["organizations"] = sorted(audit.subject(o) for o in c["organizations"])
    raw_cost, raw_full = _field(result, "cost"), _field(result, "full_retrain_cost")
    ratio = {}
    for key in ("client_steps", "wall_seconds"):
        mine, theirs = _field(raw_cost, key), _field(raw_full, key)
        if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and theirs:
            ratio[key] = decimal_str(float(mine) / float(theirs), 6)
    applied = prior[-1] if prior else audit.append({
        "type": "erasure-applied", "request": authorization.request.digest,
        "subjects": sorted(audit.subject(s) for s in subjects), "method": str(_field(result, "method")),
        "guarantee": guarantee["kind"], "before": _field(result, "previous_served_hash"),
        "after": served["served_hash"],
        # aggregate hashes (already public in round-commit events) deleted from the blob store
        # because their lineage holds an erased subject; see Ledger.purge_dependents
        "purged": sorted({c.hash for s in subjects if ledger.organization(s).status == "erased"
                          for c in ledger.purged(s)}),
    })
    crashpoints.reached("certify.applied")
    body = {
        "format": CERTIFICATE_FORMAT, "run": audit.origin,
        "issued": parse_canonical_json(audit.log.entries(applied, applied + 1)[0])["time"],
        "subjects": sorted(audit.subject(s) for s in subjects),
        "request": {"hash": authorization.request.digest, "signer": authorization.signer_role,
                    "key_id": authorization.key_id, "log_index": authorization.log_index},
        "method": str(_field(result, "method")), "guarantee": guarantee,
        "models": {
            "before": {"served": _field(result, "previous_served_hash")},
            "after": {"served": served["served_hash"],
                      "heads": {str(k): v for k, v in sorted((_field(result, "heads") or {}).items())},
                      "files": files, "export_log_index": export_index},
        },
        "cost": cost, "full_retrain_cost": full, "cost_ratio": ratio,
        "evaluation": _jsonable(dict(evaluation or {})),
        "versions": _versions(),
        "notes": _jsonable(list(_field(result, "notes") or ())),
        "erasure_log_index": applied,
    }
    signature = {"vkey": audit.verifier.vkey,
                 "sig": base64.b64encode(audit.signer.sign(signed_message(body))).decode("ascii")}
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    index = audit.append({"type": "certificate", "certificate": digest, "subjects": body["subjects"],
                          "guarantee": guarantee["kind"]})
    note = audit.checkpoint()
    size = audit.log.size
    receipt = {"index": index, "tree_size": size, "checkpoint": note,
               "proof": [base64.b64encode(h).decode("ascii") for h in audit.log.inclusion_proof(index, size)]}
    cert = Certificate(body, signature, receipt)
    folder = run.path / "certificates"
    folder.mkdir(exist_ok=True)
    path = folder / f"{index:06d}-{digest[:16]}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(cert.to_bytes() + b"\n")
    os.replace(tmp, path)  # a reader (or a crash) never sees half a certificate
    return Certificate(body, signature, receipt, path)


def certificate_summary(cert: Certificate) -> str:
    """One line: guarantee kind (and ε, δ), subjects, file."""
    g = cert.body.get("guarantee", {})
    bound = f" ε={g['epsilon']} δ={g['delta']}" if g.get("kind") == "certified" else ""
    return f"{g.get('kind')}{bound} for {len(cert.body.get('subjects', []))} subject(s): {cert.path}"
