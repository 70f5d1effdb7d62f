"""``fedunlearn ledger``: storage of a run's ledger and its compaction."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from fedunlearn.cli._app import app, console, fail
from fedunlearn.errors import FedUnlearnError

ledger_app = typer.Typer(help="A run's lineage ledger: storage and compaction.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("compact")
def compact(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    keep: str = typer.Option("", "--keep", help="Erasure methods that must stay possible, comma-separated. "
                             "Only subtract, negate and influence read stored client updates; naming one keeps "
                             "them. sisa, retrain, drop and the record-level methods need only the head-chain "
                             "aggregates, which are always kept."),
    drop_history: bool = typer.Option(False, "--drop-history", help="Also delete the aggregates of abandoned "
                                      "checkpoints (e.g. the pre-erasure model `fedunlearn evaluate` compares with)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only report what would be deleted."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Delete stored blobs no kept erasure method needs; hashes stay, and a signed audit event records what went.

    `fedunlearn verify` still passes afterwards, and refuses blobs marked compacted that no signed
    `compaction` event covers.
    """
    from fedunlearn.certify.compaction import compact_run
    from fedunlearn.ledger import CompactionPolicy

    try:
        policy = CompactionPolicy.parse(keep, drop_history=drop_history)
        report = compact_run(run, policy, dry_run=dry_run)
    except FedUnlearnError as exc:
        fail(exc)
        return
    doc = report.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {doc['updates_deleted']} client updates and {doc['aggregates_deleted']} abandoned "
                  f"aggregates (keep: {', '.join(policy.keep) or 'no update-reading method'}"
                  f"{', history dropped' if drop_history else ', history kept'})")
    console.print(f"blob storage {doc['bytes_before'] / 2**20:.2f} MB -> {doc['bytes_after'] / 2**20:.2f} MB")
