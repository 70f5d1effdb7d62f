"""A Flower deployment on one machine: SuperLink + one SuperNode per organization, by PID.

:class:`LocalDeployment` is what ``fedunlearn deploy`` and the deployment tests drive. It keeps
every file under one work folder::

    WORK/pki/          ca.crt, ca.key, server.pem, server.key     (TLS of the SuperLink)
    WORK/node-keys/    <org>.key, <org>.pub                        (SuperNode authentication)
    WORK/flwr-home/    FLWR_HOME: config.toml with the SuperLink connection, installed FABs
    WORK/app/          the Flower app that ``flwr run`` submits (see :meth:`LocalDeployment.stage_app`)
    WORK/logs/         one log per process
    WORK/superlink.db  the SuperLink's state
    WORK/deployment.json  port, isolation and the PIDs of a detached deployment (``deploy up``)

Every process is started in its own process group (``start_new_session``) and stopped by that
group's id (SIGTERM, then SIGKILL after a bounded wait), so helpers a SuperLink or SuperNode
starts (SuperExec, ServerApp, ClientApp processes) stop with it. Only 127.0.0.1 is used.

Isolation ``"warm"`` starts the SuperLink and every SuperNode with ``--isolation process`` and one
``python -m fedunlearn.deploy.warm --sources WORK/warm-sources`` process (``warm``, started first so
that its imports overlap the SuperLink's start) that imports torch, transformers and peft once and
forks the SuperExec of each of them: ServerApp runs and ClientApp messages then fork a process that
has everything imported already.
SuperNodes' executors poll for tasks every ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` seconds (Flower's
own setting; 0.5 here unless set, Flower's default is 1.0): every poll is an HTTP request that
costs the polled process CPU, so shorter intervals slow a loaded machine down.
"""

from __future__ import annotations

import contextlib

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fedunlearn.deploy.pki import NodeKeys, ServerCertificate, make_ca, make_node_keys, make_server_certificate
from fedunlearn.errors import ConfigError, FederationError

__all__ = ["CONNECTION", "LocalDeployment", "free_port", "run_config_arg", "serverapp_pids", "stop_recorded"]

CONNECTION = "fedunlearn-deploy"
HOST = "127.0.0.1"
ISOLATIONS = ("subprocess", "warm")
POLL_INTERVAL = "0.5"
SUPERLINK_POLL = 1.0  # ServerApp tasks: one per run, so Flower's default costs 0.5 s per run on average
_STATE = "deployment.json"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def run_config_arg(config: dict[str, object]) -> str:
    """Format a run config for ``flwr run --run-config`` (TOML values, space separated)."""
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return " ".join(f"{k}={value(v)}" for k, v in config.items())


@dataclass
class LocalDeployment:
    """SuperLink and SuperNodes on 127.0.0.1, with TLS and SuperNode authentication by default.

    Parameters
    ----------
    work : Path
        Folder for keys, FLWR_HOME, logs and the SuperLink database.
    app_dir : Path
        The Flower app (the folder with ``pyproject.toml``); ``flwr run`` submits its copy in
        ``WORK/app`` (:meth:`stage_app`).
    secure : bool
        TLS and SuperNode authentication (``False``: ``--insecure``, for comparisons only).
    isolation : str
        ``"subprocess"`` (Flower's default: a fresh ClientApp process per message) or ``"warm"``
        (``--isolation process`` plus :mod:`fedunlearn.deploy.warm`, for the SuperLink's ServerApp
        runs and the SuperNodes' ClientApp messages).
    """

    work: Path
    app_dir: Path
    secure: bool = True
    isolation: str = "subprocess"
    port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    node_keys: dict[str, NodeKeys] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ConfigError(f"isolation = {self.isolation!r} is invalid: expected one of {ISOLATIONS}")
        self.work = Path(self.work).resolve()
        self.app_dir = Path(self.app_dir).resolve()
        self.port = self.port or free_port()
        for sub in ("logs", "flwr-home"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)

    # -- environment --------------------------------------------------------------------------
    @property
    def flwr_home(self) -> Path:
        return self.work / "flwr-home"

    def env(self) -> dict[str, str]:
        """Environment of every process: private FLWR_HOME, no telemetry, this venv first on PATH."""
        env = dict(os.environ)
        env.update(FLWR_HOME=str(self.flwr_home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", POLL_INTERVAL)
        return env

    @property
    def app_path(self) -> Path:
        """The staged app that ``flwr run`` submits (``WORK/app``)."""
        return self.work / "app"

    def stage_app(self) -> Path:
        """Copy the app's ``pyproject.toml`` and the packages of its components into ``WORK/app``.

        ``flwr run`` packs every ``.py``/``.toml``/``.md``/``.json`` file under the folder it is
        given into the FAB, walking the whole tree first: on a repository with a virtual
        environment that takes tens of seconds per run. The ServerApp and ClientApp import
        :mod:`fedunlearn` from the installed package, so the FAB needs only the component modules
        (``[tool.flwr.app.components]``, e.g. ``server.app:app`` -> ``server/``).
        """
        source = self.app_dir / "pyproject.toml"
        try:
            components = tomllib.loads(source.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["components"]
        except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{str(source)!r} is not a Flower app ({type(exc).__name__}: {exc}): expected a "
                              "pyproject.toml with [tool.flwr.app.components]; pass the app folder with --app") from exc
        stage = self.app_path
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        shutil.copy2(source, stage / "pyproject.toml")
        for ref in components.values():
            package = str(ref).split(":")[0].split(".")[0]
            src = self.app_dir / package
            if src.is_dir():
                shutil.copytree(src, stage / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif (self.app_dir / f"{package}.py").is_file():
                shutil.copy2(self.app_dir / f"{package}.py", stage / f"{package}.py")
            else:
                raise ConfigError(f"component {ref!r} of {str(source)!r} names {package!r}, which is neither a "
                                  f"folder nor a module in {str(self.app_dir)!r}: fix [tool.flwr.app.components]")
        return stage

    def tool(self, name: str) -> str:
        """Path of a command of this venv (flwr, flower-superlink, ...), else its bare name."""
        exe = Path(sys.executable).parent / name
        return str(exe) if exe.exists() else name

    def prepare(self) -> None:
        """Write the CA, the SuperLink certificate and the SuperLink connection (config.toml)."""
        conn = f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{HOST}:{self.port}"\n'
        if self.secure:
            ca = make_ca(self.work / "pki")
            self.server = make_server_certificate(ca, self.work / "pki")
            conn += f'root-certificates = "{self.server.ca}"\n'
        else:
            conn += "insecure = true\n"
        (self.flwr_home / "config.toml").write_text(conn, encoding="utf-8")
        self.stage_app()

    @classmethod
    def from_record(cls, work: Path, app_dir: Path) -> LocalDeployment:
        """The deployment ``fedunlearn deploy up`` recorded in ``WORK/deployment.json`` (to run on it)."""
        state = Path(work) / _STATE
        if not state.is_file():
            raise ConfigError(f"{str(state)!r} does not exist: start the deployment with "
                              f"`fedunlearn deploy up --work {work}` first")
        info = json.loads(state.read_text(encoding="utf-8"))
        dep = cls(work, app_dir, secure=info["secure"], isolation=info["isolation"], port=info["port"])
        pki = dep.work / "pki"
        if dep.secure:
            dep.server = ServerCertificate(cert=pki / "server.pem", key=pki / "server.key", ca=pki / "ca.crt")
        for pub in sorted((dep.work / "node-keys").glob("*.pub")):
            dep.node_keys[pub.stem] = NodeKeys(pub.stem, pub.with_suffix(".key"), pub)
        return dep

    # -- processes ----------------------------------------------------------------------------
    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise FederationError(f"process {name!r} is already running (pid {self.procs[name].pid}): stop it first")
        log = open(self.work / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.work,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def start_superlink(self, *, timeout: float = 60.0) -> subprocess.Popen:
        """Start the SuperLink (all APIs on one HTTPS port) and wait until it accepts connections."""
        cmd = [self.tool("flower-superlink"), "--host", HOST, "--port", str(self.port),
               "--database", str(self.work / "superlink.db"), "--disable-runtime-dependency-installation"]
        if self.secure:
            cmd += ["--ssl-ca-certfile", str(self.server.ca), "--ssl-certfile", str(self.server.cert),
                    "--ssl-keyfile", str(self.server.key), "--enable-supernode-auth"]
        else:
            cmd += ["--insecure"]
        if self.isolation == "warm":
            cmd += ["--isolation", "process"]
            self.start_warm()  # imports while the SuperLink starts
        proc = self._start("superlink", cmd)
        if self.isolation == "warm":  # its SuperExec polls the SuperLink until it is up
            self._warm_source("superlink", f"{HOST}:{self.port}", str(self.server.ca) if self.secure else None,
                              proc.pid, poll=SUPERLINK_POLL)
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FederationError(f"the SuperLink did not start on {HOST}:{self.port} within {timeout:.0f} s; "
                                      f"see {self.work / 'logs' / 'superlink.log'}")
            time.sleep(0.1)
        return proc

    @property
    def warm_sources(self) -> Path:
        return self.work / "warm-sources"

    def start_warm(self) -> subprocess.Popen:
        """Start the shared warm executor (isolation ``warm``) once; a dead one is reported by
        :meth:`check_running`, not restarted (it would not serve the sources added before)."""
        if "warm" in self.procs:
            return self.procs["warm"]
        shutil.rmtree(self.warm_sources, ignore_errors=True)
        return self._start("warm", [sys.executable, "-m", "fedunlearn.deploy.warm", "--sources", str(self.warm_sources)])

    def _warm_source(self, name: str, address: str, root_certificates: str | None, parent: int,
                     poll: float | None = None) -> None:
        from fedunlearn.deploy.warm import add_source

        self.start_warm()
        add_source(self.warm_sources, name, address, parent_pid=parent, root_certificates=root_certificates, poll=poll)

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run Flower's CLI (``flwr ...``) against this deployment; bounded by ``timeout``."""
        return subprocess.run([self.tool("flwr"), *args], env=self.env(), cwd=self.work, capture_output=True,
                              text=True, timeout=timeout, start_new_session=True)

    def register(self, *orgs: str, timeout: float = 120.0) -> list[NodeKeys]:
        """Generate each organization's key pair and register its public key under ``--name ORG``.

        The ``flwr supernode register`` commands run concurrently, each bounded by ``timeout``.
        """
        keys = [make_node_keys(org, self.work / "node-keys") for org in orgs]
        procs = [subprocess.Popen([self.tool("flwr"), "supernode", "register", str(k.public_key), CONNECTION,
                                   "--name", k.org], env=self.env(), cwd=self.work, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True) for k in keys]
        failures = []
        for k, proc in zip(keys, procs):
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"{k.org} (exit {proc.returncode}): {out[-600:]}")
            self.node_keys[k.org] = k
        if failures:
            raise FederationError(f"registering organizations with the SuperLink failed: {'; '.join(failures)}")
        return keys

    def start_supernode(self, org: str, data: Path | None = None, *, key: Path | None = None,
                        executor: bool = True) -> subprocess.Popen:
        """Start ``org``'s SuperNode with node config ``org="..."``, ``requests="WORK/outbox/ORG"``
        (the organization's outbox for signed erasure requests, see fedunlearn.federation.inbox)
        and ``data="..."`` when given.

        ``key`` overrides the authentication key (default: the one :meth:`register` made).
        ``executor=False`` starts no SuperExec for it (``--isolation process`` and nothing serving
        its tasks): for a node that must never get one, such as an unregistered one being refused.
        """
        box = (self.work / "outbox" / org).resolve()
        box.mkdir(parents=True, exist_ok=True, mode=0o700)
        node_config = f'org="{org}" requests="{box}"' + (f' data="{Path(data).resolve()}"' if data else "")
        runtime_port = free_port()
        cmd = [self.tool("flower-supernode"), "--superlink", f"{HOST}:{self.port}", "--host", HOST,
               "--port", str(runtime_port), "--node-config", node_config]
        if self.secure:
            key = key or self.node_keys[org].private_key
            cmd += ["--root-certificates", str(self.server.ca), "--auth-supernode-private-key", str(key)]
        else:
            cmd += ["--insecure"]
        if self.isolation == "warm" or not executor:
            cmd += ["--isolation", "process"]
        proc = self._start(f"supernode-{org}", cmd)
        if self.isolation == "warm" and executor:  # the SuperNode's Runtime API is plain HTTP on 127.0.0.1
            self._warm_source(f"supernode-{org}", f"{HOST}:{runtime_port}", None, proc.pid)
        return proc

    def run_args(self, run_config: str = "") -> list[str]:
        """Arguments of ``flwr run WORK/app CONNECTION --stream [--run-config ...]``."""
        return ["run", str(self.app_path), CONNECTION, "--stream"] + (["--run-config", run_config] if run_config else [])

    def run(self, run_config: dict[str, object], *, timeout: float = 600.0) -> subprocess.CompletedProcess:
        """``flwr run`` of the staged app with ``run_config``; returns when the run ends."""
        return self.flwr(*self.run_args(run_config_arg(run_config)), timeout=timeout)

    def stop(self, name: str, *, grace: float = 10.0) -> None:
        """Stop process ``name`` and its process group: SIGTERM, then SIGKILL after ``grace`` s."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)  # the group id is the PID we started (start_new_session)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                if sig == signal.SIGTERM:
                    os.killpg(proc.pid, signal.SIGKILL)  # leftovers in the group
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break

    def stop_all(self, *, grace: float = 10.0) -> None:
        """Stop every process this deployment started: SIGTERM to every process group at once,
        SIGKILL to the groups still alive after ``grace`` seconds."""
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):  # then killed below
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group's leftovers (or the leader itself)
            proc.wait(timeout=5.0)

    def check_running(self) -> None:
        """Raise FederationError naming every started process that has exited, with its log's end."""
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            name = next(iter(dead))
            log = (self.work / "logs" / f"{name}.log").read_text(errors="replace")[-1500:]
            raise FederationError(f"{', '.join(f'{n} (exit {c})' for n, c in dead.items())} stopped right after "
                                  f"starting; see {self.work / 'logs'}. End of {name}.log:\n{log}")

    def pids(self) -> dict[str, int]:
        """PIDs (= process group ids) of the running processes by name."""
        return {n: p.pid for n, p in self.procs.items() if p.poll() is None}

    def record(self) -> Path:
        """Write ``WORK/deployment.json`` (port, PIDs) so that another command can stop the processes."""
        path = self.work / _STATE
        path.write_text(json.dumps({"port": self.port, "secure": self.secure, "isolation": self.isolation,
                                    "pids": self.pids()}, indent=2) + "\n", encoding="utf-8")
        return path

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def stop_recorded(work: Path, *, grace: float = 10.0) -> list[str]:
    """Stop the processes a detached deployment recorded in ``WORK/deployment.json``; return their names.

    Each PID is a process group id (processes are started with ``start_new_session``); a group
    is signalled only when its leader still runs the command we started (checked with psutil).
    """
    import psutil

    path = Path(work) / _STATE
    if not path.is_file():
        raise FederationError(f"{str(path)!r} does not exist: expected the work folder of `fedunlearn deploy up`")
    pids: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))["pids"]
    ours: dict[str, psutil.Process] = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):  # gone: nothing to stop
            proc = psutil.Process(pid)
            if os.getpgid(pid) == pid and str(Path(work).resolve()) in " ".join(proc.cmdline()) + str(proc.cwd()):
                ours[name] = proc  # else: not ours any more (PID reused)
    for proc in ours.values():  # SIGTERM to every group at once, SIGKILL to what is left after `grace`
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    psutil.wait_procs(list(ours.values()), timeout=grace)
    for proc in ours.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group's leftovers (or the leader itself)
    stopped = sorted(ours)
    path.unlink()
    return stopped


def serverapp_pids(work: Path) -> list[int]:
    """PIDs of the ServerApp processes now running on the deployment recorded in ``WORK``.

    They are the children of the SuperLink's SuperExec: Flower's ``flower-superexec`` (isolation
    ``subprocess``) or the SuperLink's loop of :mod:`fedunlearn.deploy.warm` (isolation ``warm``,
    its PID in ``WORK/warm-sources/superlink.pid``). Killing one is what a crash of the
    coordinator's server looks like to the rest of the deployment.
    """
    import psutil

    info = json.loads((Path(work) / _STATE).read_text(encoding="utf-8"))
    pids = info["pids"]
    try:
        if info["isolation"] == "warm":
            executors = [psutil.Process(int((Path(work) / "warm-sources" / "superlink.pid").read_text()))]
        else:
            executors = [p for p in psutil.Process(pids["superlink"]).children()
                         if "flower-superexec" in " ".join(p.cmdline())]
        return sorted(c.pid for e in executors for c in e.children() if c.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, FileNotFoundError, ValueError):  # not started (yet) or gone
        return []
