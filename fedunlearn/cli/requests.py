"""``fedunlearn requests``: queue signed erasure requests for a running federation; list them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from fedunlearn.cli._app import app, console, err_console, fail
from fedunlearn.errors import FedUnlearnError


@app.command()
def requests(
    run: Path = typer.Option(..., "--run", help="Run folder of the (running or resumable) training."),
    submit: Optional[Path] = typer.Option(None, "--submit", help="A signed erasure request to queue "
                                          "(`fedunlearn keys sign-request`); the training applies it before its "
                                          "next round, or when it resumes."),
    as_json: bool = typer.Option(False, "--json", help="Print the requests as one JSON document."),
) -> None:
    """List erasure requests (received, refused, applied with certificate), their age and deadline; queue one."""
    from fedunlearn.certify import SignedRequest
    from fedunlearn.federation.inbox import DEADLINE, status
    from fedunlearn.federation.inbox import submit as queue

    try:
        if submit is not None:
            path = queue(run, SignedRequest.read(submit))
            err_console.print(f"queued {path.name[:16]}…: applied before the training's next round (or when it resumes)")
        rows = status(run)
    except FedUnlearnError as exc:
        fail(exc)
        return
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    if not rows:
        console.print("no erasure request for this run")
    for row in rows:
        what = ", ".join(row["subjects"] or []) + (f" ({row['records']} records)" if row["records"] else "")
        extra = row.get("certificate") or row.get("reason") or ""
        line = (f"{row['state']:8s} {what:24s} received {row['received']}, {row['age_days']:.1f} days ago, "
                f"deadline {row['deadline']}  {extra}")
        if row["late"]:
            err_console.print(f"[bold red]LATE[/] {line}: over {int(0.8 * DEADLINE.days)} of its {DEADLINE.days} "
                              "days and not applied: is the training running?", soft_wrap=True)
        else:
            console.print(line, soft_wrap=True, highlight=False)
