# SPDX-License-Identifier: Apache-2.0
"""Running ``npusim`` as a user does, and checking its one-line errors."""

from __future__ import annotations

import subprocess
import sys


def npusim(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npusim.runtime.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_user_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npusim: error: "), res.stderr
    assert "Traceback" not in res.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
