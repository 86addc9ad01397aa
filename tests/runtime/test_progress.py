# SPDX-License-Identifier: Apache-2.0
"""Progress bars: on a terminal while long work runs, wiped when it ends, never elsewhere."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import onnx
from onnx_helpers import small_featurizer

from npusim.compiler import compile_model
from npusim.runtime.cli import main
from npusim.runtime.session import Session
from npusim.simulator import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _work() -> None:
    prog = compile_model(small_featurizer(), "tiny")
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    Session(prog).run(None, {"images": x})


def test_a_terminal_sees_compile_and_simulate_bars():
    term = _Terminal()
    with progress.shown(stream=term):
        assert progress.enabled()
        _work()
    text = term.getvalue()
    assert "compile:" in text and "step" in text
    assert "simulate:" in text and "instr" in text
    assert text.endswith("\r") or "\r" in text.splitlines()[-1]  # wiped, not left behind
    assert not progress.enabled()


def test_nothing_is_shown_off_a_terminal_or_when_not_asked(capsys):
    pipe = io.StringIO()
    with progress.shown(stream=pipe):
        assert not progress.enabled()
        _work()
    with progress.shown(enable=False, stream=_Terminal()):
        assert not progress.enabled()
    _work()  # no display installed at all: a library call
    assert pipe.getvalue() == ""
    assert capsys.readouterr().err == ""


def test_quiet_turns_the_bars_off(tmp_path, monkeypatch, capsys):
    onnx.save(small_featurizer(), tmp_path / "m.onnx")
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["--quiet", "compile", str(tmp_path / "m.onnx"), "-o",
                 str(tmp_path / "m.npub"), "--device", "tiny"]) == 0
    assert term.getvalue() == ""
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.npub"),
                 "--device", "tiny"]) == 0
    assert "compile:" in term.getvalue()
    assert "compiled" in capsys.readouterr().out  # the result line is on stdout, whole


def test_the_command_on_a_real_terminal(tmp_path):
    """``npusim compile`` under a pseudo-terminal: the bar is drawn, then wiped, and the
    lines the command prints come after it, whole."""
    onnx.save(small_featurizer(), tmp_path / "m.onnx")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "npusim", "compile", str(tmp_path / "m.onnx"),
                             "-o", str(tmp_path / "m.npub"), "--device", "tiny"],
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0
    text = out.decode(errors="replace")
    assert "compile:" in text
    after = text[text.rindex("compile:"):]
    assert "\r" + " " * 20 in after  # wiped
    assert "compiled " in after
