"""``fedunlearn deploy``: a Flower deployment on this machine with TLS and SuperNode authentication.

``up`` makes the key material (CA, SuperLink certificate, one key pair per organization), starts
the SuperLink, registers each organization's public key under its name and starts one SuperNode
per organization (node config ``org="NAME" data="FOLDER"``); ``run`` submits the app with
``flwr run`` (the app staged in ``WORK/app``); ``down`` stops every process by the PIDs recorded in ``WORK/deployment.json``.
"""

from __future__ import annotations

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
    """``flwr run`` of the app (staged in WORK/app) against the deployment in WORK; exits with its status."""
    import subprocess

    from fedunlearn.deploy import LocalDeployment

    try:
        dep = LocalDeployment.from_record(work, app_dir)
        dep.stage_app()  # the app as it is now
    except FedUnlearnError as exc:
        fail(exc)
        return
    with subprocess.Popen([dep.tool("flwr"), *dep.run_args(" ".join(config))], env=dep.env(), cwd=dep.work) as proc:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            fail(ConfigError(f"flwr run did not finish within --timeout {timeout:g} s: raise --timeout"))
            return
    raise typer.Exit(code=code)


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
