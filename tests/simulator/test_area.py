# SPDX-License-Identifier: Apache-2.0
"""npusim.simulator.area: the first-order logic model of the matrix unit, term by term."""

from __future__ import annotations

import math

import pytest

from npusim.simulator import area
from npusim.simulator.config import load_device
from npusim.simulator.numerics import FORMAT_NAMES, get_format


def test_a_lane_is_its_multiplier_adder_tree_and_block_share():
    f = get_format("msfp16")  # m = 7, B = 16, E = 8
    assert area.mac_cells(f) == 7 * 7 + 2 * 7 + math.log2(16) / 2 + (8 + 300) / 16
    f8 = get_format("msfp8", 128)  # m = 2, B = 128, E = 5
    assert area.mac_cells(f8) == 4 + 4 + 3.5 + 305 / 128
    assert area.mac_cells(get_format("fp32")) == 24 * 24 + 300
    assert area.converter_cells(f) == 8 + 9 * 5 and area.converter_cells(f8) == 5 + 4 * 5


def test_more_bits_cost_more_and_bigger_blocks_share_more():
    cells = {n: area.mac_cells(get_format(n, 128)) for n in FORMAT_NAMES}
    assert cells["msfp8"] < cells["msfp9"] < cells["msfp12"] < cells["msfp16"] < cells["fp32"]
    assert area.mac_cells(get_format("msfp8", 256)) < area.mac_cells(get_format("msfp8", 64))


@pytest.mark.parametrize("preset", ["brainwave-s10", "arria10-pbs", "intel-npu", "tiny"])
def test_the_device_figure_is_lanes_and_converters(preset):
    cfg = load_device(preset)
    f = cfg.format()
    want = (cfg.peak_macs_per_cycle * area.mac_cells(f)
            + cfg.input_lanes * area.converter_cells(f)) / 2
    assert cfg.matrix_alms == pytest.approx(want)
    assert cfg.replace(array_cols=cfg.array_cols * 2).matrix_alms > cfg.matrix_alms


def test_a_minifloat_lane_aligns_its_products_before_the_tree():
    f = get_format("mxfp8_e4m3")  # x = 4, y = 3, B = 32, E = 8
    width = 2 * 3 + 2 + 2 ** 5
    assert area.mac_cells(f) == (16 + 5 + 8 * 5 + width + math.log2(32) / 2 + 308 / 32)
    # the same storage, more logic than an integer element: the alignment
    assert area.mac_cells(f) > area.mac_cells(get_format("mxint8"))
    assert area.mac_cells(get_format("mxfp4_e2m1")) < area.mac_cells(get_format("mxfp6_e3m2"))
