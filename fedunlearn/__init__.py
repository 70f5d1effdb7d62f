"""fedunlearn: federated LoRA fine-tuning with provable, signed erasure of organizations."""

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
