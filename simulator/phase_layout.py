# SPDX-License-Identifier: Apache-2.0
"""A channel plane laid out in its stride phases, for the kernels that run a plane at a
time (depthwise convolutions and pooling, :mod:`npusim.simulator._fast_phases`).

Each plane is copied into its ``Sy x Sx`` stride phases, in rows as wide as the output:
tap ``k`` of every output pixel ``m = oy * pitch + ox`` is then element ``offs[k] + m``
of the phases, so a tap over all the output rows is one contiguous run. Where a tap falls
in the padding, a mask says so (the kernel reads the padding's value there).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np


class FlatLayout(NamedTuple):
    """Where a depthwise convolution's (or a pooling's) taps are in a channel plane laid
    out in its stride phases in rows of ``pitch`` elements (``_fast_phases._fill_phases``):
    tap ``k`` of output ``m = oy * pitch + ox`` is element ``offs[k] + m`` of the phases
    (``planes`` of ``length`` elements, one after the other), inside the plane where
    ``masks[mk[k], m % (rows * pitch)]``."""
    out_hw: tuple[int, int]
    strides: tuple[int, int]
    planes: int
    length: int
    start: int
    offs: np.ndarray
    masks: np.ndarray
    mk: np.ndarray
    rows: int
    pitch: int
    """Elements per row of the phases and of the outputs as made (``ow``, or more)."""


@functools.lru_cache(maxsize=256)
def flat_layout(hw: tuple[int, int], geom, out_hw: tuple[int, int], columns: int,
                wide: bool = False) -> FlatLayout | None:
    """The phase layout of a one-channel-per-group convolution (or a pooling) of an ``hw``
    plane, its outputs made as many output rows at a time as fill ``columns`` elements
    (at least one), in rows as wide as the output;
    None when a phase is wider than the output (no padding on the right: the plane-wise
    kernel takes it). With ``wide``, such a layout's rows are as wide as the widest phase
    instead (``FlatLayout.pitch``), and its outputs past ``ow`` in each row are dropped."""
    h, w = hw
    oh, ow = out_hw
    sy, sx = geom.strides
    pitch = max(ow, -(-w // sx))
    if (pitch > ow and not wide) or oh * ow == 0:
        return None
    rows = max(1, columns // pitch)
    kh, kw = geom.kernel
    ky = np.repeat(np.arange(kh, dtype=np.int64) * geom.dilations[0], kw)  # (kh, kw) order
    kx = np.tile(np.arange(kw, dtype=np.int64) * geom.dilations[1], kh)
    top, left = geom.pads[:2]
    fy, py = np.divmod(ky - top, sy)
    fx, px = np.divmod(kx - left, sx)
    start = max(0, -int(fy.min())) * pitch + max(0, -int(fx.min()))
    offs = start + fy * pitch + fx
    length = max(int(offs.max()) + oh * pitch, start + -(-h // sy) * pitch) + 1
    offs = (offs + (py * sx + px) * length).astype(np.int64)
    cols = np.arange(rows * pitch) % pitch
    ncols = -(-(w - px[:kw]) // sx)  # valid columns of each tap column's phase
    masks = (cols[None] + fx[:kw, None] >= 0) & (cols[None] + fx[:kw, None] < ncols[:, None])
    mk = np.arange(len(ky), dtype=np.int64) % kw
    for a in (offs, masks, mk):
        a.setflags(write=False)
    return FlatLayout(out_hw, (sy, sx), sy * sx, length, start, offs, masks, mk, rows, pitch)
