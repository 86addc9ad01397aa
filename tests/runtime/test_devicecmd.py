# SPDX-License-Identifier: Apache-2.0
"""``npusim device``: every preset formats, and what it shows is the configuration's properties."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources

import pytest

from npusim.runtime.cli.device import UNITS, format_device, format_device_list
from npusim.simulator.config import DeviceConfig, load_device, preset_names


def shown(text: str) -> dict[str, str]:
    """label -> value (with unit) of every indented line of :func:`format_device`."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("  "):
            label, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            rows[label] = value
    return rows


def number(value: str) -> float:
    return float(value.split()[0].replace(",", ""))


def preset_text(name: str) -> str:
    return resources.files("npusim.simulator.presets").joinpath(f"{name}.toml").read_text()


def test_every_field_has_a_unit_entry():
    assert set(UNITS) == {f.name for f in dataclasses.fields(DeviceConfig)} - {"name", "mvu"}


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_formats_its_fields_and_properties(name):
    cfg = load_device(name)
    text = format_device(cfg)
    rows = shown(text)
    assert text.splitlines()[0] == f"device {name}"
    for f in dataclasses.fields(cfg):
        if f.name in ("name", "mvu"):
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, str):
            assert rows[f.name] == value
        else:
            assert number(rows[f.name]) == pytest.approx(value, rel=1e-3), f.name
        assert rows[f.name].endswith(UNITS[f.name])
    for f in dataclasses.fields(cfg.mvu) if cfg.mvu else ():  # the matrix-vector unit's table
        assert number(rows[f.name]) == getattr(cfg.mvu, f.name), f.name
    assert number(rows["peak MACs per cycle"]) == cfg.peak_macs_per_cycle
    assert number(rows["peak TOPS"]) == pytest.approx(cfg.peak_tops, rel=1e-3)
    assert number(rows["on-chip capacity"]) == pytest.approx(cfg.on_chip_kib / 1024, rel=1e-3)
    assert number(rows["DRAM bytes per cycle"]) == pytest.approx(cfg.dram_bytes_per_cycle,
                                                                 rel=1e-3)
    assert number(rows["host bytes per cycle"]) == pytest.approx(cfg.host_bytes_per_cycle,
                                                                 rel=1e-3)
    assert number(rows["host latency"]) == cfg.host_latency_cycles
    assert number(rows["block size"]) == cfg.format().block_size
    assert rows["fingerprint"] == cfg.fingerprint().hex()[:16]
    assert re.fullmatch(r"[0-9a-f]{16}", rows["fingerprint"])


def test_brainwave_s10_figures():
    cfg = load_device("brainwave-s10")
    rows = shown(format_device(cfg))
    assert rows["peak MACs per cycle"] == "96,000"
    assert rows["peak TOPS"] == "48.0"
    # the preset's comment: on-chip buffers fit the 11,721 M20K blocks of 20 Kbit
    assert cfg.on_chip_kib <= 11_721 * 20 / 8


def test_arria10_pbs_figures_match_its_comments():
    cfg = load_device("arria10-pbs")
    text = preset_text("arria10-pbs")
    assert "16,384 MACs per cycle" in text and "8.19 peak TOPS" in text
    assert cfg.peak_macs_per_cycle == 16_384
    assert round(cfg.peak_tops, 2) == 8.19
    rows = shown(format_device(cfg))
    assert rows["peak MACs per cycle"] == "16,384" and rows["peak TOPS"] == "8.192"
    # "Weights need 16,384 x 4 bit = 65,536 bit/cycle = 1,638.4 M20Ks x 20 Kbit = 4,096 KiB"
    bits_per_cycle = cfg.peak_macs_per_cycle * cfg.format().element_bits
    assert bits_per_cycle == 65_536
    assert bits_per_cycle / 40 * 20 / 8 == cfg.weight_buffer_kib
    # the weights' read width stays within the Stratix 10 instance's 61 % share of 2,713 x 40 bit
    assert bits_per_cycle <= 96_000 * 3 / (11_721 * 40) * (2_713 * 40)
    # and every buffer fits the 2,713 M20K blocks (6,782.5 KiB)
    assert cfg.on_chip_kib <= 2_713 * 20 / 8


def test_user_file_based_on_a_preset_shows_the_override(tmp_path):
    path = tmp_path / "mydev.toml"
    path.write_text('base = "tiny"\nclock_mhz = 200\nnumerics = "msfp16"\n')
    text = format_device(load_device(path))
    rows = shown(text)
    tiny = shown(format_device(load_device("tiny")))
    assert text.splitlines()[0] == "device mydev"
    assert rows["clock_mhz"] == "200.0 MHz" and tiny["clock_mhz"] == "100.0 MHz"
    assert rows["numerics"] == "msfp16"
    assert number(rows["peak TOPS"]) == pytest.approx(2 * number(tiny["peak TOPS"]))
    assert rows["native_dim"] == tiny["native_dim"]
    assert rows["fingerprint"] != tiny["fingerprint"]


def test_fp32_has_no_shared_exponent():
    rows = shown(format_device(load_device("tiny").replace(numerics="fp32")))
    assert rows["block size"] == "1 (fp32: no shared exponent)"


def test_device_list_has_one_summary_per_preset():
    lines = format_device_list().splitlines()
    names = preset_names()
    assert len(lines) == len(names)
    for line, name in zip(lines, names, strict=True):
        cfg = load_device(name)
        assert line.split()[0] == name
        assert f"{cfg.tiles} x ({cfg.native_dim} x {cfg.array_cols})" in line
        assert f" {cfg.numerics} " in line
        clock, tops = re.search(r"([\d.,]+) MHz .* ([\d.,]+) peak TOPS$", line).groups()
        assert float(clock) == cfg.clock_mhz
        assert float(tops) == pytest.approx(cfg.peak_tops, rel=1e-3)
