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

import importlib
import sys
import types
from typing import TYPE_CHECKING

#: Where each public name lives. The package imports its modules on first use (PEP 562), so that
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
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from fedunlearn.certify.accounting import AccountantReport, account, client_level_epsilon, epsilon
    from fedunlearn.certify.authorize import Authorization, SignedRequest, authorize_request, sign_request
    from fedunlearn.certify.budget import BudgetCheck, check_budget, privacy_accounts
    from fedunlearn.certify.certificate import Certificate, certify_erasure, served_lineage_orgs
    from fedunlearn.certify.removal import RemovalNoise, removal_noise
    from fedunlearn.certify.runaudit import RunAudit, subject_hash
    from fedunlearn.certify.verify_run import RunVerification, verify_certificate, verify_run


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The import system sets each loaded submodule as an attribute of its package; where a public
    function has the name of its module (``verify_run``), the function must win, as it did when
    this package imported everything eagerly: ``from fedunlearn.certify import verify_run`` is the
    function whatever was imported before."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and _MODULE_OF.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
