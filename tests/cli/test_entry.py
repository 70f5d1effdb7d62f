"""The console entry point: no traceback for what a user can cause, a one-line report of a bug."""

from __future__ import annotations

import signal
import sys

import pytest

from fedunlearn.cli import run


@pytest.fixture(autouse=True)
def _keep_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def _boom(*_args, **_kwargs):
    raise RuntimeError("kaboom")


def test_an_unexpected_error_is_one_message_unless_debug(monkeypatch, capsys, tmp_path):
    from fedunlearn.runs import RunFolder

    monkeypatch.setattr(RunFolder, "open", classmethod(_boom))
    monkeypatch.setattr(sys, "argv", ["fedunlearn", "info", "--run", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        run()
    err = capsys.readouterr().err
    assert exited.value.code == 1
    assert "internal error: RuntimeError: kaboom" in " ".join(err.split()) and "--debug" in err
    assert "Traceback" not in err
    monkeypatch.setattr(sys, "argv", ["fedunlearn", "--debug", "info", "--run", str(tmp_path)])
    with pytest.raises(RuntimeError, match="kaboom"):
        run()


def test_user_errors_and_usage_errors_keep_their_status(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["fedunlearn", "info", "--run", str(tmp_path / "none")])
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code == 2 and "not a fedunlearn run folder" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["fedunlearn", "forget"])
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code == 2 and "Missing option '--run'" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["fedunlearn", "--version"])
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code == 0 and "fedunlearn" in capsys.readouterr().out


def test_ctrl_c_in_plain_work_ends_with_130_and_a_message(monkeypatch, capsys, tmp_path):
    from fedunlearn.runs import RunFolder

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunFolder, "open", classmethod(interrupted))
    monkeypatch.setattr(sys, "argv", ["fedunlearn", "info", "--run", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        run()
    err = capsys.readouterr().err
    assert exited.value.code == 130 and "stopped" in err and "fedunlearn info --run" in err
    assert "Aborted!" not in err and "Traceback" not in err


def test_sigint_stops_a_command_started_in_the_background():
    """A command started by a non-interactive shell in the background (`cmd &`) inherits SIGINT as
    ignored; an explicit `kill -INT` must still stop it, as it stops one in the foreground."""
    import signal
    import subprocess
    import sys

    code = ("from fedunlearn.interrupt import terminate_as_interrupt; terminate_as_interrupt(); import time\n"
            "try:\n    print('ready', flush=True)\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
            "    print('stopped', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "stopped"
