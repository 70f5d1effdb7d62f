"""Certification: DP accounting, the run's audit log, signed erasure requests and certificates.

Modules
-------
accounting   ε of subsampled Gaussian mechanisms (Opacus PRV, RDP cross-check); client_level_epsilon
budget       per-organization accounts read from the audit log; the ε budget that stops training
runaudit     ``RunAudit``: RUN_DIR/audit.sqlite, the coordinator key, keyed subject hashes
authorize    signed erasure requests; ``authorize_request`` (refusals are logged)
removal      Gaussian noise for a Newton-step removal (Guo et al. 2020) and its assumptions
certificate  ``certify_erasure``: canonical JSON, Ed25519-signed, logged with an inclusion receipt
verify_run   ``verify_run``: what ``fedunlearn verify`` checks
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedunlearn.lazy import lazy_package

#: Where each public name lives: the package imports its modules on first use, so that
#: ``import fedunlearn.certify.authorize`` (a request, its signature) does not load Opacus and
#: transformers: quick commands (``fedunlearn requests``, ``keys``) stay quick.
_WHERE = {
    "accounting": ("AccountantReport", "account", "client_level_epsilon", "epsilon"),
    "authorize": ("Authorization", "SignedRequest", "authorize_request", "sign_request"),
    "budget": ("BudgetCheck", "check_budget", "privacy_accounts"),
    "certificate": ("Certificate", "certify_erasure", "served_lineage_orgs"),
    "removal": ("RemovalNoise", "removal_noise"),
    "runaudit": ("RunAudit", "subject_hash"),
    "verify_run": ("RunVerification", "verify_certificate", "verify_run"),
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from fedunlearn.certify.accounting import AccountantReport, account, client_level_epsilon, epsilon
    from fedunlearn.certify.authorize import Authorization, SignedRequest, authorize_request, sign_request
    from fedunlearn.certify.budget import BudgetCheck, check_budget, privacy_accounts
    from fedunlearn.certify.certificate import Certificate, certify_erasure, served_lineage_orgs
    from fedunlearn.certify.removal import RemovalNoise, removal_noise
    from fedunlearn.certify.runaudit import RunAudit, subject_hash
    from fedunlearn.certify.verify_run import RunVerification, verify_certificate, verify_run

__all__ = [
    "AccountantReport",
    "Authorization",
    "BudgetCheck",
    "Certificate",
    "RemovalNoise",
    "RunAudit",
    "RunVerification",
    "SignedRequest",
    "account",
    "authorize_request",
    "certify_erasure",
    "check_budget",
    "client_level_epsilon",
    "epsilon",
    "privacy_accounts",
    "removal_noise",
    "served_lineage_orgs",
    "sign_request",
    "subject_hash",
    "verify_certificate",
    "verify_run",
]

__getattr__, __dir__ = lazy_package(__name__, _WHERE, __all__)
