# SPDX-License-Identifier: Apache-2.0
"""The README's Python snippets run as written (the client's with the address, key and
certificate of a server this test starts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _snippet(first_line: str) -> str:
    found = [s for s in snippets() if s.splitlines()[0] == first_line]
    assert len(found) == 1, f"the README has no single snippet starting {first_line!r}"
    return found[0]


def test_every_snippet_is_covered():
    firsts = sorted(s.splitlines()[0] for s in snippets())
    assert firsts == ["from npusim.compiler import compile_model",
                      "from npusim.runtime import PredictionClient", "import numpy as np"], firsts


def test_the_python_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_snippet("import numpy as np"), "README.md (Python)", "exec"), scope)
    assert scope["features"].shape == (8, 2048, 1, 1)
    assert (tmp_path / "resnet50.npub").is_file()


@pytest.mark.slow
def test_the_pipeline_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_snippet("from npusim.compiler import compile_model"), "README.md (pipeline)",
                 "exec"), {})
    from npusim.runtime import load_package

    assert load_package(tmp_path / "resnet50.zip").name == "resnet50"


@pytest.mark.slow
def test_the_client_snippet_runs(tmp_path, monkeypatch):
    from serving_helpers import KEYS, build_package, start_server

    pkg = build_package(tmp_path)
    server = start_server(pkg)
    try:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "cat.jpg").write_bytes(pkg.images[0])
        (tmp_path / "server.crt").write_bytes(pkg.cert.read_bytes())
        code = _snippet("from npusim.runtime import PredictionClient").replace(
            '"localhost", 8500', f'"localhost", {server.port}')
        scope = {"key": KEYS[0]}
        exec(compile(code, "README.md (client)", "exec"), scope)
        assert scope["probs"].shape == pkg.expected[0].shape and len(scope["top5"]) == 5
    finally:
        server.stop()
