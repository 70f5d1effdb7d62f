"""A warm SuperExec for a SuperLink or SuperNode started with ``--isolation process``.

Flower 1.42 runs every ServerApp run and every ClientApp message in a fresh process
(``flwr-serverapp`` / ``flwr-clientapp``) started by ``flower-superexec``; with the default
``--isolation subprocess`` the SuperLink and each SuperNode start that SuperExec themselves.
Every run and every message therefore re-imports torch, transformers and peft (seconds each on
a small CPU). Flower's own warm executor pools exist only for its Kubernetes executor and only
for agent, model and connector tasks (``flwr.supercore.superexec.executor.factory``), not for
ServerApps or ClientApps, and ``flwr-clientapp`` serves exactly one task token per process.

With ``--isolation process`` the SuperLink (SuperNode) starts no SuperExec: a process of our
choosing pulls tasks from its Runtime API. This module is that process. It imports the heavy
libraries once and then runs Flower's own SuperExec loop
(``flwr.supercore.superexec.run_superexec``) with an executor that *forks* per task; the child
runs Flower's unmodified console entry point (``flwr-serverapp`` or ``flwr-clientapp``, with
the arguments Flower's ``SubprocessExecutor`` would pass): same protocol, same token, one
process per task, but everything already imported. Run it as::

    python -m fedunlearn.deploy.warm --runtime-api-address 127.0.0.1:PORT --insecure \
        --parent-pid SUPERNODE_PID

Flower 1.42 has no public way to choose the executor of ``run_superexec``; this module sets the
module attribute ``run_superexec.get_executor``. :func:`check_flower` verifies, before anything
starts, that the Flower installed is the version this was written against and still has every
name and parameter used; otherwise it stops with a message saying to use ``--isolation
subprocess`` (which needs nothing of this) or to update this module.

One machine that runs several Flower processes (``fedunlearn deploy up``: the SuperLink and every
SuperNode) needs the import only once: ``--sources DIR`` pre-loads, then forks one SuperExec loop
per *source file* that appears in ``DIR`` (``NAME.json``: ``{"address": ..., "parent_pid": ...,
"root_certificates": path or null, "poll": seconds or null}``; each loop writes its PID to
``NAME.pid``), and exits when
every loop has ended (each ends with its SuperLink/SuperNode, Flower's parent-PID monitor).

``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (seconds, Flower's default 1.0) sets how often it asks
for a task; ``--poll`` sets it for this process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedunlearn.errors import FederationError

if TYPE_CHECKING:
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

__all__ = ["FLOWER_VERSIONS", "ForkExecutor", "add_source", "check_flower", "main", "preload", "run_loop",
           "serve_sources", "task_argv"]

FLOWER_VERSIONS = ("1.42.",)
"""Flower releases (prefixes) whose SuperExec internals this module was checked against."""

_SUPEREXEC_PARAMS = ("runtime_api_address", "insecure", "root_certificates_path", "parent_pid",
                     "runtime_dependency_install")
_SPEC_FIELDS = ("task_type", "runtime_api_address", "token", "insecure", "root_certificates_path")
_EXECUTOR_METHODS = ("get_eligible_capacity", "wait_for_capacity", "launch", "reconcile", "close")


def check_flower() -> None:
    """Refuse to run on a Flower whose SuperExec internals differ from the ones used here.

    Raises
    ------
    FederationError
        Naming the Flower version found, what is missing or changed, and the two ways out.
    """
    import flwr

    problems: list[str] = []
    if not flwr.__version__.startswith(FLOWER_VERSIONS):
        problems.append(f"version {flwr.__version__} (checked: {', '.join(v + 'x' for v in FLOWER_VERSIONS)})")
    try:
        import flwr.supercore.superexec.run_superexec as superexec
        from flwr.supercore.constant import TASK_TYPE_TO_COMMAND, TaskType
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
        from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult  # noqa: F401
    except ImportError as exc:
        problems.append(f"import failed: {exc}")
    else:
        if not callable(getattr(superexec, "get_executor", None)):
            problems.append("run_superexec.get_executor is gone")
        params = inspect.signature(superexec.run_superexec).parameters
        problems += [f"run_superexec() has no parameter {p!r}" for p in _SUPEREXEC_PARAMS if p not in params]
        fields = {f.name for f in dataclasses.fields(ExecutionSpec)}
        problems += [f"ExecutionSpec has no field {f!r}" for f in _SPEC_FIELDS if f not in fields]
        problems += [f"the executor protocol has no {m}()" for m in _EXECUTOR_METHODS
                     if not hasattr(SubprocessExecutor, m)]
        for task in (TaskType.SERVER_APP, TaskType.CLIENT_APP):
            try:
                _entry_point(TASK_TYPE_TO_COMMAND[task])
            except (KeyError, LookupError) as exc:
                problems.append(f"no console entry point for {task}: {exc}")
    if problems:
        raise FederationError(
            "the warm executor (fedunlearn.deploy.warm) replaces a Flower internal, "
            "flwr.supercore.superexec.run_superexec.get_executor, and this Flower does not match what it "
            f"was written for: {'; '.join(problems)}. Deploy with --isolation subprocess (Flower's default, "
            "a fresh process per message), or pin flwr to a checked version, or update fedunlearn/deploy/warm.py"
        )


@functools.lru_cache(maxsize=None)
def _entry_point(command: str):
    """The function behind Flower's console script ``command`` (e.g. ``flwr-clientapp``)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="console_scripts", name=command) if ep.value.startswith("flwr.")]
    if not found:
        raise LookupError(f"console script {command!r} of flwr is not installed")
    return found[0].load()


def preload() -> None:
    """Import what every task needs (torch, transformers, peft, fedunlearn, Flower's app runtimes)."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import fedunlearn.unlearning.service  # noqa: F401
    import fedunlearn.federation.workflow  # noqa: F401
    import fedunlearn.training.client  # noqa: F401
    import flwr.superlink.cli.flwr_serverapp  # noqa: F401
    import flwr.supernode.cli.flwr_clientapp  # noqa: F401


def task_argv(spec: ExecutionSpec) -> list[str]:
    """The command line Flower's ``SubprocessExecutor`` would run for ``spec`` (no dependency install)."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND

    argv = [TASK_TYPE_TO_COMMAND[spec.task_type], TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
            spec.runtime_api_address, "--token", spec.token]
    if spec.insecure:
        argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:  # the task ends when this SuperExec does
        argv += ["--parent-pid", str(spec.parent_pid)]
    return argv


class ForkExecutor:
    """A SuperExec executor that forks this (pre-loaded) process for each ServerApp/ClientApp task."""

    def __init__(self) -> None:
        from flwr.supercore.constant import TaskType

        self.task_types = {TaskType.SERVER_APP, TaskType.CLIENT_APP}
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types: set, *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set, set[str]]:
        """ServerApp and ClientApp tasks can start at once (no capacity gate); nothing else."""
        return set(supported_task_types) & self.task_types, set()

    def wait_for_capacity(self, task_type: object = None, *, fab_hash: str | None = None, insecure: bool = False,
                          root_certificates_path: str | None = None) -> None:
        """No capacity gate: return at once."""

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork; the child runs Flower's ``flwr-serverapp``/``flwr-clientapp`` entry for ``spec.token``."""
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type not in self.task_types:
            return LaunchResult.failed(f"the warm executor runs ServerApp and ClientApp tasks, not {spec.task_type}")
        argv = task_argv(spec)
        main_function = _entry_point(argv[0])
        pid = os.fork()
        if pid == 0:  # child: never returns into the SuperExec loop
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                sys.argv = argv
                main_function()
                code = 0
            except SystemExit as exc:  # flwr_exit ends every task with sys.exit
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:  # noqa: BLE001 - report and exit the child, whatever happened
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):  # a replaced stdout may be closed already
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


def run_loop(address: str, *, root_certificates: str | None, parent_pid: int | None) -> None:
    """Flower's SuperExec loop on the Runtime API at ``address`` with :class:`ForkExecutor` (never returns)."""
    import flwr.supercore.superexec.run_superexec as superexec

    executor = ForkExecutor()
    superexec.get_executor = lambda *a, **k: executor  # Flower's loop, our executor (see check_flower)
    superexec.run_superexec(runtime_api_address=address, insecure=root_certificates is None,
                            root_certificates_path=root_certificates, parent_pid=parent_pid,
                            runtime_dependency_install=False)


def add_source(folder: Path, name: str, address: str, *, parent_pid: int, root_certificates: str | None,
               poll: float | None = None) -> Path:
    """Ask the ``--sources`` process watching ``folder`` to serve the Runtime API at ``address``
    (polling it for tasks every ``poll`` seconds; default: ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(json.dumps({"address": address, "parent_pid": parent_pid, "root_certificates": root_certificates,
                               "poll": poll}), encoding="utf-8")
    return tmp.replace(folder / f"{name}.json")  # atomic: the watcher never reads half a file


def serve_sources(folder: Path, *, first_within: float = 600.0) -> None:
    """Fork one :func:`run_loop` per source file appearing in ``folder``; return when all have ended
    (or when none appeared within ``first_within`` seconds)."""
    started: set[str] = set()
    children: dict[int, str] = {}
    deadline = time.monotonic() + first_within
    while True:
        for path in sorted(folder.glob("*.json")):
            if path.stem in started:
                continue
            started.add(path.stem)
            source = json.loads(path.read_text(encoding="utf-8"))
            pid = os.fork()
            if pid == 0:  # child: one SuperExec loop, until its SuperLink/SuperNode ends
                code = 1
                try:
                    (folder / f"{path.stem}.pid").write_text(str(os.getpid()), encoding="utf-8")
                    if source.get("poll"):
                        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(source["poll"])
                    run_loop(source["address"], root_certificates=source.get("root_certificates"),
                             parent_pid=source.get("parent_pid"))
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 0
                except BaseException:  # noqa: BLE001 - report and end this loop only
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            children[pid] = path.stem
        for pid in list(children):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            children.pop(pid)
        if (started and not children) or (not started and time.monotonic() > deadline):
            return
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> None:
    """Check Flower, parse arguments, pre-load, then run the SuperExec loop(s) with :class:`ForkExecutor`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", help="The SuperLink's/SuperNode's Runtime API, host:port.")
    parser.add_argument("--insecure", action="store_true", help="Talk to the Runtime API without TLS.")
    parser.add_argument("--root-certificates", default=None, help="CA of the Runtime API's TLS certificate.")
    parser.add_argument("--parent-pid", type=int, default=None, help="Exit when this process (the SuperNode) ends.")
    parser.add_argument("--sources", type=Path, default=None,
                        help="Serve every Runtime API described by a NAME.json file appearing in this folder "
                             "(instead of --runtime-api-address).")
    parser.add_argument("--poll", type=float, default=None, help="Seconds between task polls (Flower: 1.0).")
    args = parser.parse_args(argv)
    if (args.runtime_api_address is None) == (args.sources is None):
        parser.error("pass exactly one of --runtime-api-address ADDRESS and --sources FOLDER")
    if args.runtime_api_address and not args.insecure and not args.root_certificates:
        parser.error("--runtime-api-address needs --insecure or --root-certificates CA")
    try:
        check_flower()
    except FederationError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    if args.poll is not None:
        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.poll)
    preload()
    if args.sources is not None:
        args.sources.mkdir(parents=True, exist_ok=True)
        serve_sources(args.sources)
        return
    run_loop(args.runtime_api_address, root_certificates=None if args.insecure else args.root_certificates,
             parent_pid=args.parent_pid)


if __name__ == "__main__":
    main()
