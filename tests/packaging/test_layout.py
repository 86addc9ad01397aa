# SPDX-License-Identifier: Apache-2.0
"""The install layout: one top-level name, ``npusim``, over the repository's folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"compiler": "npusim.compiler", "simulator": "npusim.simulator",
           "runtime": "npusim.runtime", "rtl": "npusim.rtl"}


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_source_folder_is_a_listed_package():
    cfg = _setuptools()
    assert {k: v for k, v in cfg["package-dir"].items() if k != "npusim"} == \
        {v: k for k, v in FOLDERS.items()}
    wanted = {"npusim"}
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in (".py", ".sv", ".toml") or "build" in path.parts \
                    or "__pycache__" in path.parts:
                continue
            rel = path.parent.relative_to(REPO / folder).parts
            wanted.add(".".join((package, *rel)))
    assert set(cfg["packages"]) == wanted


def test_the_package_imports_from_a_source_checkout_without_install(tmp_path):
    code = ("import npusim, npusim.compiler, npusim.simulator.numerics as n; "
            "print(n.__file__); import sys; "
            "assert not {'compiler', 'simulator', 'runtime', 'rtl'} & set(sys.modules)")
    # -S: no site, so no .pth file installs the editable finder; numpy from its own folder
    deps = Path(np.__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": f"{REPO}:{deps}"}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == REPO / "simulator" / "numerics.py"


def test_top_level_api():
    import npusim

    assert npusim.__version__
    for name in ("compile_model", "Session", "load_device", "Device", "get_format"):
        assert callable(getattr(npusim, name)), name
    assert npusim.load_device("tiny").name == "tiny"


@pytest.mark.slow
def test_the_wheel_installs_npusim_and_nothing_else_at_the_top(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "build", "__pycache__", "*.egg-info", ".pytest_cache", "*.png"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(tmp_path / "out"), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "out").glob("npusim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"npusim", wheel.name.split("-py")[0] + ".dist-info"}
    for must in ("npusim/__init__.py", "npusim/compiler/driver.py",
                 "npusim/simulator/presets/brainwave-s10.toml", "npusim/rtl/bfp_dot/bfp_dot.sv",
                 "npusim/rtl/common/fp32_add.sv", "npusim/runtime/zoo/resnet.py"):
        assert must in names, must
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "npusim = npusim.runtime.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def _import_graph(folder: str, package: str):
    """Module -> the modules of ``package`` it imports anywhere (in functions too, and
    under ``TYPE_CHECKING``): every edge that can make an import circle."""
    import ast

    import networkx as nx

    mods = {}
    for f in (REPO / folder).rglob("*.py"):
        rel = f.relative_to(REPO / folder).with_suffix("").parts
        name = ".".join((package, *rel)).removesuffix(".__init__")
        mods[name] = f
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            g.add_edges_from((name, t) for t in targets if t in mods and t != name)
    return g


def test_the_runtime_has_no_import_circles():
    import networkx as nx

    g = _import_graph("runtime", "npusim.runtime")
    assert {"npusim.runtime.serving.pipeline", "npusim.runtime.analysis.sweep",
            "npusim.runtime.cli.program"} <= set(g)
    assert list(nx.simple_cycles(g)) == []
