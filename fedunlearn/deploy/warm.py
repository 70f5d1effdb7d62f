"""A warm task executor for a SuperNode started with ``--isolation process``.

Flower 1.42 runs each ClientApp message in a fresh ``flwr-clientapp`` process started by
``flower-superexec`` (``--isolation subprocess``, the default, starts that SuperExec inside the
SuperNode). Every message therefore re-imports torch, transformers and peft. Flower's own warm
executor pools exist only for the Kubernetes executor and only for agent, model and connector
tasks, not for ClientApps.

With ``flower-supernode --isolation process`` the SuperNode starts no SuperExec: a process of
our choosing pulls tasks from the SuperNode's Runtime API. This module is that process. It
imports the heavy libraries once and then runs Flower's own SuperExec loop
(``flwr.supercore.superexec.run_superexec``) with an executor that *forks* per task; the child
runs Flower's unmodified ``run_clientapp`` (same protocol, same token, same isolation of one
process per message), but starts with everything already imported. Run it as::

    python -m fedunlearn.deploy.warm --runtime-api-address 127.0.0.1:PORT --insecure \
        --parent-pid SUPERNODE_PID

``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (seconds, Flower's default 1.0) sets how often it asks
for a task; ``--poll`` sets it for this process.
"""

from __future__ import annotations

import contextlib

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

__all__ = ["ForkExecutor", "main", "preload"]


def preload() -> None:
    """Import what every ClientApp message needs (torch, transformers, peft, fedunlearn, flwr)."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import fedunlearn.training.client  # noqa: F401
    import flwr.supernode.runtime.run_clientapp  # noqa: F401


class ForkExecutor:
    """A SuperExec executor that forks this (pre-loaded) process for each ClientApp task."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types: set, *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set, set[str]]:
        """Every supported task type can start at once (no capacity gate)."""
        return supported_task_types, set()

    def wait_for_capacity(self, task_type: object = None, *, fab_hash: str | None = None, insecure: bool = False,
                          root_certificates_path: str | None = None) -> None:
        """No capacity gate: return at once."""

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork; the child runs Flower's ``run_clientapp`` for ``spec.token`` and exits."""
        from flwr.supercore.superexec.executor.types import LaunchResult

        pid = os.fork()
        if pid == 0:  # child: never returns into the SuperExec loop
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                from flwr.supernode.runtime.run_clientapp import run_clientapp

                certificates = None
                if not spec.insecure and spec.root_certificates_path:
                    with open(spec.root_certificates_path, "rb") as f:
                        certificates = f.read()
                run_clientapp(runtime_api_address=spec.runtime_api_address, token=spec.token,
                              insecure=spec.insecure, certificates=certificates, parent_pid=None,
                              runtime_dependency_install=False)
                code = 0
            except SystemExit as exc:  # flwr_exit ends every task with sys.exit
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:  # noqa: BLE001 - report and exit the child, whatever happened
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        """Stop children still running (SuperExec shutdown)."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError, ChildProcessError):  # already reaped
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
        self.children.clear()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, pre-load, and run Flower's SuperExec loop with :class:`ForkExecutor`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="The SuperNode's Runtime API, host:port.")
    parser.add_argument("--insecure", action="store_true", help="Talk to the Runtime API without TLS.")
    parser.add_argument("--root-certificates", default=None, help="CA of the Runtime API's TLS certificate.")
    parser.add_argument("--parent-pid", type=int, default=None, help="Exit when this process (the SuperNode) ends.")
    parser.add_argument("--poll", type=float, default=None, help="Seconds between task polls (Flower: 1.0).")
    args = parser.parse_args(argv)
    if args.poll is not None:
        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.poll)
    preload()
    import flwr.supercore.superexec.run_superexec as superexec

    executor = ForkExecutor()
    superexec.get_executor = lambda *a, **k: executor  # Flower's loop, our executor
    superexec.run_superexec(runtime_api_address=args.runtime_api_address, insecure=args.insecure,
                            root_certificates_path=args.root_certificates, parent_pid=args.parent_pid,
                            runtime_dependency_install=False)


if __name__ == "__main__":
    main()
