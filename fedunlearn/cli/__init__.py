"""The ``fedunlearn`` command. Each module registers its sub-commands on one Typer app."""

from __future__ import annotations

from fedunlearn.cli import train  # noqa: F401  (demo, simulate, export, info)
from fedunlearn.cli import forget  # noqa: F401  (forget)
from fedunlearn.cli import requests  # noqa: F401  (requests)
from fedunlearn.cli import verify  # noqa: F401  (verify, keys)
from fedunlearn.cli import deploy  # noqa: F401  (deploy up, run, down)
from fedunlearn.cli import evaluate  # noqa: F401  (evaluate, report)
from fedunlearn.cli import ledger  # noqa: F401  (ledger compact)
from fedunlearn.cli import bench  # noqa: F401  (bench)
from fedunlearn.cli import model  # noqa: F401  (model build, model info, data real-text)
from fedunlearn.cli._app import app

__all__ = ["app", "run"]


def run() -> None:
    """Console-script entry point: Ctrl-C and SIGTERM end with a message and status 130, no traceback.

    Flower-backed commands stop at a safe point themselves (:mod:`fedunlearn.interrupt`); any
    other work is interrupted where it is, and its files are written atomically, so nothing
    half-written is left.
    """
    import sys

    import click

    from fedunlearn.cli._app import DEBUG, STOP_REPORTED, err_console, resume_hint
    from fedunlearn.interrupt import EXIT_CODE, terminate_as_interrupt

    terminate_as_interrupt()
    import warnings  # peft 0.21 calls transformers 5's renamed is_gradient_checkpointing: not the user's concern

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    def stopped() -> None:
        err_console.print(f"\n[bold yellow]stopped[/]: nothing half-written was kept. Run it again with: "
                          f"{resume_hint()}", soft_wrap=True, highlight=False)
        sys.exit(EXIT_CODE)

    try:
        code = app(standalone_mode=False)  # typer turns Ctrl-C into a silent return of 130
    except (click.Abort, KeyboardInterrupt):
        stopped()
    except click.ClickException as exc:  # usage errors: click's own message and status
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, not a user error (those exit 2 with their fix): no wall of text
        if DEBUG[0]:
            raise
        from rich.markup import escape

        err_console.print(f"[bold red]internal error[/]: {type(exc).__name__}: {escape(str(exc))[:500]}\n"
                          "This is a bug in fedunlearn, not in your input. Run the command again with "
                          "`fedunlearn --debug ...` for the traceback, and report it.", soft_wrap=True, highlight=False)
        sys.exit(1)
    if code == EXIT_CODE and not STOP_REPORTED[0]:
        stopped()
    sys.exit(code if isinstance(code, int) else 0)
