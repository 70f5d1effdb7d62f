"""The ``fedunlearn`` command. Each module registers its sub-commands on one Typer app."""

from __future__ import annotations

from fedunlearn.cli import train  # noqa: F401  (demo, simulate, export, info)
from fedunlearn.cli import forget  # noqa: F401  (forget)
from fedunlearn.cli import verify  # noqa: F401  (verify, keys)
from fedunlearn.cli import deploy  # noqa: F401  (deploy up, run, down)
from fedunlearn.cli import evaluate  # noqa: F401  (evaluate, report)
from fedunlearn.cli import ledger  # noqa: F401  (ledger compact)
from fedunlearn.cli import bench  # noqa: F401  (bench)
from fedunlearn.cli import model  # noqa: F401  (model build, model info, data real-text)
from fedunlearn.cli._app import app

__all__ = ["app", "run"]


def run() -> None:
    """Console-script entry point."""
    app()
