"""``fedunlearn deploy``: a Flower deployment on this machine with TLS and SuperNode authentication.

``up`` makes the key material (CA, SuperLink certificate, one key pair per organization), starts
the SuperLink, registers each organization's public key under its name and starts one SuperNode
per organization (node config ``org="NAME" data="FOLDER"``); ``run`` submits the app with
``flwr run`` (the app staged in ``WORK/app``); ``down`` stops every process by the PIDs recorded in ``WORK/deployment.json``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from fedunlearn.cli._app import app, console, fail
from fedunlearn.errors import ConfigError, FedUnlearnError

__all__ = ["deploy_app"]

deploy_app = typer.Typer(help="SuperLink + SuperNodes on 127.0.0.1 with TLS and node authentication.",
                         no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

_ROOT = Path(__file__).resolve().parents[2]


def _orgs(items: list[str]) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    for item in items:
        name, _, data = item.partition("=")
        if not name:
            raise ConfigError(f"--org {item!r} is invalid: expected NAME or NAME=DATA_FOLDER, e.g. org-0=orgs/org-0")
        out[name] = Path(data).resolve() if data else None
    return out


@deploy_app.command("up")
def up(
    work: Path = typer.Option(..., "--work", help="Folder for keys, FLWR_HOME, logs and PIDs."),
    org: list[str] = typer.Option(..., "--org", help="NAME or NAME=DATA_FOLDER, one per organization (repeat)."),
    app_dir: Path = typer.Option(_ROOT, "--app", help="Flower app folder (with pyproject.toml)."),
    isolation: str = typer.Option("subprocess", "--isolation", help="subprocess (Flower's default) | warm."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no node authentication (comparisons only)."),
    port: int = typer.Option(0, "--port", help="SuperLink port on 127.0.0.1 (0 = a free one)."),
) -> None:
    """Make keys, start the SuperLink, register and start one SuperNode per organization (detached)."""
    from fedunlearn.deploy import LocalDeployment

    try:
        orgs = _orgs(org)
        dep = LocalDeployment(work, app_dir, secure=not insecure, isolation=isolation, port=port)
        dep.prepare()
        try:
            dep.start_superlink()
            if not insecure:
                dep.register(*orgs)
            for name, data in orgs.items():
                dep.start_supernode(name, data)
            dep.check_running()
        except BaseException:
            dep.stop_all()
            raise
        record = dep.record()
    except FedUnlearnError as exc:
        fail(exc)
        return
    console.print(f"SuperLink on 127.0.0.1:{dep.port} ({'TLS + node auth' if not insecure else 'insecure'}), "
                  f"SuperNodes: {', '.join(orgs)}; PIDs in {record}")
    console.print(f"run:  fedunlearn deploy run --work {work} -c 'run.dir=\"runs/x\"'   stop: fedunlearn deploy down --work {work}")


@deploy_app.command("run")
def run(
    work: Path = typer.Option(..., "--work", help="The folder given to `deploy up`."),
    config: list[str] = typer.Option([], "-c", "--run-config", help="key=value run config (TOML values; repeat)."),
    app_dir: Path = typer.Option(_ROOT, "--app", help="Flower app folder (with pyproject.toml)."),
    timeout: float = typer.Option(3600.0, "--timeout", help="Seconds before `flwr run` is stopped."),
) -> None:
    """``flwr run`` of the app (staged in WORK/app) against the deployment in WORK; exits with its status.

    Ctrl-C or SIGTERM stops the Flower run on the SuperLink (``flwr stop RUN_ID``), so its ServerApp
    ends and no SuperNode waits on it; committed rounds and journaled erasures are kept and the
    same command resumes. The deployment itself keeps running (``deploy down`` stops it).
    """
    import subprocess

    from fedunlearn.deploy import LocalDeployment

    try:
        dep = LocalDeployment.from_record(work, app_dir)
        dep.stage_app()  # the app as it is now
    except FedUnlearnError as exc:
        fail(exc)
        return
    # its own session: a terminal's Ctrl-C reaches this process only, which stops the run first
    proc = subprocess.Popen([dep.tool("flwr"), *dep.run_args(" ".join(config))], env=dep.env(), cwd=dep.work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                            errors="replace", start_new_session=True)
    streamed = _Stream(proc)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        said = _stop_run(dep, proc, streamed)
        fail(ConfigError(f"flwr run did not finish within --timeout {timeout:g} s; {said}. Raise --timeout and run "
                         "the same command to resume"))
        return
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into one)
        said = _stop_run(dep, proc, streamed)
        from fedunlearn.interrupt import Interrupted

        fail(Interrupted(f"stopped: {said}"))
        return
    streamed.join()
    raise typer.Exit(code=code)


class _Stream:
    """Copy ``flwr run``'s output to ours, line by line, and note the run id it prints.

    It never stops reading: a failed write (a closed pipe, an encoding the terminal lacks) drops
    that line only, so ``flwr run`` never blocks on a full pipe.
    """

    def __init__(self, proc) -> None:
        import threading

        self.run_id: str | None = None
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc) -> None:
        import re
        import sys

        for line in proc.stdout:
            found = re.search(r"started run (\d+)", line)
            if found and self.run_id is None:
                self.run_id = found.group(1)
            with contextlib.suppress(OSError, UnicodeError, ValueError):  # a closed pipe drops this line only
                sys.stdout.write(line)
                sys.stdout.flush()

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


def _stop_run(dep, proc, streamed: _Stream, *, grace: float = 20.0) -> str:
    """Stop the Flower run (``flwr stop``: its ServerApp ends, SuperNodes stop waiting on it) and
    ``flwr run``; return what happened, for the message. Signals are ignored while it runs (a second
    Ctrl-C would leave the run going on the SuperLink); ``flwr run`` is killed whatever happens."""
    import os
    import signal
    import subprocess

    from fedunlearn.deploy import CONNECTION

    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        streamed.join(timeout=0.5)
        if streamed.run_id is None:  # not started yet as far as we know: end `flwr run` first, then look again
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            streamed.join(timeout=2)
            if streamed.run_id is None:
                return "the SuperLink had not started the run"
        run_id = streamed.run_id
        console.print(f"stopping Flower run {run_id} on the SuperLink (flwr stop) ...")
        try:
            done = dep.flwr("stop", run_id, CONNECTION, timeout=60)
            stopped = done.returncode == 0
            why = "" if stopped else (done.stdout + done.stderr).strip()[-300:]
        except subprocess.TimeoutExpired:
            stopped, why = False, "no answer within 60 s"
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)  # streaming ends with the run
        if stopped:
            return f"Flower run {run_id} was stopped on the SuperLink (flwr stop)"
        return (f"Flower run {run_id} may still run on the SuperLink: flwr stop failed ({why}); stop it with "
                f"FLWR_HOME={dep.flwr_home} flwr stop {run_id} {CONNECTION}")
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@deploy_app.command("down")
def down(work: Path = typer.Option(..., "--work", help="The folder given to `deploy up`.")) -> None:
    """Stop every process of the deployment in WORK by its recorded PID (process group)."""
    from fedunlearn.deploy.local import stop_recorded

    try:
        stopped = stop_recorded(work)
    except FedUnlearnError as exc:
        fail(exc)
        return
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
