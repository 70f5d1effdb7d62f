"""The HTML report renders its plots in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib

import pytest

from fedunlearn.evaluate.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _doc() -> dict:
    roc = {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.6, 1.0]}
    mia = {k: {"auc": 0.7, "tpr_at_fpr": 0.1, "roc": roc} for k in ("loss", "zlib", "min_k", "min_k_plus_plus")}
    def model(name, kind, exposure):
        return {"name": name, "kind": kind, "mia": mia, "kl_to_retrain": 0.01,
                "exposure": {"mean": exposure, "baseline_p95": 2.0},
                "utility": {"holdout": {"org-0": {"loss": 2.5}, "org-2": {"loss": 2.7}}}}
    return {"format": "fedunlearn-evaluation/1", "subject": "org-1",
            "models": [model("before", "before", 9.0), model("after:sisa", "after", 1.2)],
            "erasures": [{"method": "sisa", "cost": {"client_steps": 12, "wall_seconds": 3.0},
                          "full_retrain_cost": {"client_steps": 84, "wall_seconds": 22.0}}],
            "retrain_spread": {"mean": 0.01, "max": 0.02}}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (./dev test installs it)")
def test_report_renders_plots_in_chromium(tmp_path):
    run = tmp_path / "run"
    (run / "evaluation").mkdir(parents=True)
    (run / "evaluation" / "org-1.json").write_text(json.dumps(_doc()))
    page = write_report(run, tmp_path / "report.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count("<svg") == 4  # ROC, exposure, utility, cost
    assert "<polyline" in dom and "<rect class=\"bar\"" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1000,900", page.as_uri()],
                   capture_output=True, timeout=120)
    assert len(set(_png_bytes(shot.read_bytes()))) > 20  # not blank: many distinct pixel values


def _png_bytes(data: bytes) -> bytes:
    """The decompressed scanlines of a PNG (no imaging library needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)
