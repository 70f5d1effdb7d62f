"""``fedunlearn bench``: run the benchmark suite of a source checkout (``benchmarks/run.py``)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from fedunlearn.cli._app import app, err_console

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    only: str = typer.Option("realtext,training,erasure,length,dp,live,scale", "--only", help="Comma-separated "
                             "sections: realtext (what the default model learns of real text at --size), training, "
                             "erasure, length (erasure cost against training rounds), dp, live (delay of an erasure request honored "
                             "during training, time the others lose), scale."),
    quick: bool = typer.Option(False, "--quick", help="Smoke-test sizes (seconds per section)."),
    model: str = typer.Option("", "--model", help="Local model folder (default: the embedded default)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    size: str = typer.Option("small", "--size", help="Embedded default size when --model is not given: small or large."),
    text: str = typer.Option("synthetic", "--text", help="Organizations' data: synthetic, or real text found on "
                             "this machine."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results file (default: benchmarks/RESULTS.md)."),
) -> None:
    """Measure erasure cost and quality, DP overhead, scale and training throughput; write RESULTS.md.

    Further options of benchmarks/run.py (--grid, --scale-points, --merge, --render) are passed through.
    """
    if not SUITE.is_file():
        err_console.print(f"[bold red]error:[/] the benchmark suite {SUITE} is not here: `fedunlearn bench` runs "
                          "from a source checkout of fedunlearn (git clone, then pip install -e .)")
        raise typer.Exit(code=2)
    cmd = [sys.executable, str(SUITE), "--only", only, "--model", model, "--device", device, "--size", size,
           "--text", text]
    cmd += ["--quick"] if quick else []
    cmd += ["--out", str(out)] if out else []
    cmd += list(ctx.args)
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM here: the suite stops too, cleaning up, then is killed
        proc.send_signal(signal.SIGTERM)  # the suite turns it into KeyboardInterrupt (SIGINT may be ignored)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    raise typer.Exit(code=code)
