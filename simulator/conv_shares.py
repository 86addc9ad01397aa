# SPDX-License-Identifier: Apache-2.0
"""What every way of running a convolution shares: the zero padding its windows read
around a plane, and how much work a thread's share of it must hold."""

from __future__ import annotations

import functools

import numpy as np

from npusim.simulator.numerics import Format


@functools.lru_cache(maxsize=1024)
def pad_extent(hw: tuple[int, int], geom, out_hw: tuple[int, int]
               ) -> tuple[int, int, int, int]:
    """``(top, left, Hp, Wp)``: the zero padding every window of ``geom`` reads around an
    ``hw`` plane (top and left as the geometry says; bottom and right as far as the last
    window reaches), and the padded plane's size."""
    h, w = hw
    oh, ow = out_hw
    need_h = (oh - 1) * geom.strides[0] + (geom.kernel[0] - 1) * geom.dilations[0] + 1
    need_w = (ow - 1) * geom.strides[1] + (geom.kernel[1] - 1) * geom.dilations[1] + 1
    top, left = geom.pads[:2]
    return top, left, top + h + max(need_h - h - top, 0), left + w + max(need_w - w - left, 0)


def padded(x: np.ndarray, geom, out_hw: tuple[int, int], channels_last: bool = False
           ) -> np.ndarray:
    """``x [C, H, W]`` with the zero padding of :func:`pad_extent`; with
    ``channels_last``, ``[H, W, C]`` (in one copy)."""
    c, h, w = x.shape
    top, left, hp, wp = pad_extent((h, w), geom, out_hw)
    bottom, right = hp - h - top, wp - w - left
    if channels_last:
        xt = np.zeros((h + top + bottom, w + left + right, c), np.float32)
        xt[top:top + h, left:left + w] = x.transpose(1, 2, 0)
        return xt
    if top == left == bottom == right == 0:
        return x
    xp = np.zeros((c, h + top + bottom, w + left + right), np.float32)
    xp[:, top:top + h, left:left + w] = x
    return xp


SHARE_MACS = {"blas": 1 << 20, "blocks": 1 << 20, "direct": 1 << 17, "direct_f32": 1 << 19,
              "vnni": 1 << 21, "fma": 1 << 20}
"""MACs a share must hold to be worth a thread hand-off (10-25 us, :mod:`threads`): about
30 us of work for an fp32 GEMM (BLAS) and for the direct kernels (depthwise, grouped, a
product of a few rows), fp32 or quantized; about 100 us of a block format's products, whose
smaller layers split worse (measured in-process on the mobile graphs: MobileNetV2 and
ShuffleNet 5-20% faster than with a fourth of these grains for BLAS and the direct
kernels, MobileNetV3-Small unchanged; a smaller grain for the block products made
MobileNetV3-Small 5-15% slower)."""


def direct_kind(fmt: Format) -> str:
    """The ``SHARE_MACS`` kind of a direct kernel in ``fmt``."""
    return "direct_f32" if fmt.is_fp32 else "direct"


def grain(macs_per_task: int, kind: str = "blocks") -> int:
    """Tasks per share so that a share is worth a thread hand-off (``SHARE_MACS``)."""
    return max(1, SHARE_MACS[kind] // max(1, macs_per_task))
