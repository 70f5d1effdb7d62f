"""fedunlearn: federated LoRA fine-tuning with provable, signed erasure of organizations.

Layers (imports point down only; ``tests/test_layers.py`` checks it, ``docs/architecture.md``
describes it):

=====  ===============================  =====================================================
7      ``cli``                          the ``fedunlearn`` command (front ends outside the
                                        package: ``clients/``, ``server/``, ``benchmarks/``)
6      ``deploy``, ``evaluate``         deployment tooling; the judge (never imported below)
5      ``unlearning``                   unlearners and the erasure service (``service``)
4      ``federation``                   coordinator, topology, protocol, simulation engine
3      ``training``                     local fit/eval/grad/HVP/solvers/forget, DP-SGD
2      ``certify``, ``models``          accounting, authorization, certificates; base LM, LoRA
1      ``audit``, ``data``, ``ledger``,  Merkle log and keys (self-contained); corpora and
       ``config``, ``runs``             organizations' data; lineage; settings; run folders
0      ``errors``, ``progress``,        exceptions, reporters, registries, Ctrl-C handling,
       ``registry``, ``interrupt``,     named crash points (fault injection)
       ``crashpoints``
=====  ===============================  =====================================================
"""

from __future__ import annotations

from fedunlearn.errors import (
    ConfigError,
    DataError,
    FedUnlearnError,
    FederationError,
    IntegrityError,
    LedgerError,
    ModelError,
    NodesMissingError,
    RunStateError,
    UnknownNameError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "FedUnlearnError",
    "FederationError",
    "IntegrityError",
    "LedgerError",
    "ModelError",
    "NodesMissingError",
    "RunStateError",
    "UnknownNameError",
    "__version__",
]
