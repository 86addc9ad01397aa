# SPDX-License-Identifier: Apache-2.0
"""Weight tensors as the fast kernels read them (:mod:`npusim.simulator.gemm`,
:mod:`npusim.simulator.dense`): made once per tensor and kept while the tensor lives."""

from __future__ import annotations

import weakref

import numpy as np

from npusim.simulator import _fma, _fma_grouped, _vnni
from npusim.simulator.numerics import BfpTensor, block_scales


class _Tiles:
    """A weight tensor as the fast kernels read it, made once per tensor (the device
    decodes its weights once, at program load). It holds no reference to the tensor: it
    is the value of a weak-keyed cache entry, which must not keep its key alive."""

    def __init__(self, w: BfpTensor) -> None:
        self.scales = np.ascontiguousarray(block_scales(w))  # [O, J] float64
        self._mantissas: dict[int, np.ndarray] = {}
        self._scales32: dict[int, np.ndarray] = {}
        self._channels: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._transposed: np.ndarray | None = None
        self._rows: tuple[np.ndarray, np.ndarray] | bool | None = None
        self._vnni: dict[tuple[int, int], list[tuple[np.ndarray, ...]]] = {}

    def by_channels(self, w: BfpTensor, per_group: int, taps: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """float32 mantissas ``[og, K, G]`` and float64 scales ``[og, J, G]`` of a
        convolution with one input channel per group (row ``g * og + r`` at ``[r, :, g]``),
        as :func:`npusim.simulator._fast_direct.depthwise_quantized` reads them."""
        if per_group not in self._channels:
            o = w.q.shape[0]
            m = w.q[:, :taps].reshape(o // per_group, per_group, taps).transpose(1, 2, 0)
            s = self.scales.reshape(o // per_group, per_group, -1).transpose(1, 2, 0)
            self._channels[per_group] = (np.ascontiguousarray(m, np.float32),
                                         np.ascontiguousarray(s, np.float64))
        return self._channels[per_group]

    def rows_f32(self, w: BfpTensor) -> tuple[np.ndarray, np.ndarray] | None:
        """float32 mantissas ``[O, Kp]`` and block scales ``[O, J]`` (1 for a finite
        block of zero mantissas) as :func:`npusim.simulator._bfp_rows.depthwise` reads
        them, or None when a scale is not a power of two in fp32's normal range (the
        kernel's fp32 scale products would not be exact)."""
        if self._rows is None:
            s = weight_scales(w, self.scales)
            fine = np.isnan(s) | ((np.frexp(s)[0] == 0.5) & (s >= 2.0**-126) & (s <= 2.0**127))
            self._rows = (np.ascontiguousarray(w.q, np.float32),
                          np.ascontiguousarray(s, np.float32)) if fine.all() else False
        return self._rows or None

    def transposed(self, w: BfpTensor) -> np.ndarray:
        """int8 ``[K, O]``: the mantissas of every output side by side (a product of a few
        rows is vectorized along the outputs)."""
        if self._transposed is None:
            self._transposed = np.ascontiguousarray(w.q.T)
        return self._transposed

    def vnni(self, w: BfpTensor, groups: int, k: int) -> list[tuple[np.ndarray, ...]]:
        """Per group, the weights as :func:`npusim.simulator._vnni.product`'s broadcast
        operand ``(W, C, T)`` for ``k`` elements of K (a short single block is cut to its
        quads)."""
        b = w.fmt.block_size
        quads = -(-k // 4) if k < b else b // 4
        if (groups, quads) not in self._vnni:
            o = w.q.shape[0]
            og = o // groups
            s = self.scales32(w, groups)
            self._vnni[groups, quads] = [
                _vnni.pack_weights(w.q[g * og:(g + 1) * og], s[g].T, b, quads)
                for g in range(groups)]
        return self._vnni[groups, quads]

    def mantissas(self, w: BfpTensor, groups: int) -> np.ndarray:
        """float32 ``[G, J, O/G, B]`` (the GEMM's left operand per group)."""
        if groups not in self._mantissas:
            o, kp = w.q.shape
            b = w.fmt.block_size
            m = w.q.reshape(groups, o // groups, kp // b, b).transpose(0, 2, 1, 3)
            self._mantissas[groups] = np.ascontiguousarray(m, np.float32)
        return self._mantissas[groups]

    def scales32(self, w: BfpTensor, groups: int) -> np.ndarray:
        """float32 ``[G, J, O/G]``; 1 for a finite block of zero mantissas (as the
        activations' scales in :func:`npusim.simulator._fast_gemm._quantize_block`)."""
        if groups not in self._scales32:
            o = w.q.shape[0]
            s = weight_scales(w, self.scales).reshape(groups, o // groups, -1)
            self._scales32[groups] = np.ascontiguousarray(s.transpose(0, 2, 1), np.float32)
        return self._scales32[groups]


def weight_scales(w: BfpTensor, scales: np.ndarray | None = None) -> np.ndarray:
    """``w``'s block scales (``[..., J]``, float64, ``scales`` if already made), 1 for a
    finite block of zero mantissas: its products are 0 under any finite scale, and 1
    keeps a huge activation scale from making them 0 * inf."""
    if scales is None:
        scales = block_scales(w)
    zero = ~w.q.reshape(*w.q.shape[:-1], -1, w.fmt.block_size).any(axis=-1)
    return np.where(zero & np.isfinite(scales), 1.0, scales)


_PACKED: dict[int, tuple[weakref.ref, dict]] = {}


def _made_once(w: np.ndarray, layout: tuple, make):
    """``make(w as float32)``, made once per fp32 weight array and ``layout`` (kept while
    the array lives: arrays are not hashable, so the cache is keyed by identity and its
    entry leaves with the array)."""
    key = id(w)
    entry = _PACKED.get(key)
    if entry is None or entry[0]() is not w:
        entry = _PACKED[key] = (weakref.ref(w, lambda _, key=key: _PACKED.pop(key, None)),
                                {})
    made = entry[1]
    if layout not in made:
        made[layout] = make(np.asarray(w, np.float32))
    return made[layout]


def _per_group(w: np.ndarray, groups: int, taps: int, pack) -> list[np.ndarray]:
    """``pack(rows of a group, taps)`` of an fp32 weight array ``w [O, K]`` for each of its
    groups, made once per array and packer."""
    def make(wf: np.ndarray) -> list[np.ndarray]:
        og = wf.shape[0] // groups
        return [pack(wf[g * og:(g + 1) * og], taps) for g in range(groups)]
    return _made_once(w, (pack.__name__, groups, taps), make)


def packed_f32(w: np.ndarray, groups: int, taps: int) -> list[np.ndarray]:
    """Per group, an fp32 weight array ``w [O, K]`` (K in ``(taps, C)`` order) as
    :func:`npusim.simulator._fma.product` reads it, made once per array and layout."""
    return _per_group(w, groups, taps, _fma.pack_weights)


def grouped_f32(w: np.ndarray, groups: int, taps: int) -> np.ndarray:
    """An fp32 weight array ``w [O, K_g]`` of a convolution in ``groups`` groups as
    :func:`npusim.simulator._fma_grouped.product` reads it, made once per array."""
    return _made_once(w, ("grouped", groups, taps),
                      lambda wf: _fma_grouped.pack(wf, groups, taps))


def pixel_packed_f32(w: np.ndarray, groups: int, taps: int) -> list[np.ndarray]:
    """Per group, an fp32 weight array ``w [O, K]`` (K in ``(taps, C)`` order) as
    :func:`npusim.simulator._fma.product_by_pixels` reads it, made once per array."""
    return _per_group(w, groups, taps, _fma.pack_by_pixels)


def channels_last_f32(w: np.ndarray, og: int, lanes: int = 1) -> np.ndarray:
    """An fp32 weight array ``w [G * og, K]`` of one input channel per group as the
    channel-last depthwise kernels read it, ``[og, K, G]`` (``G`` padded with zero weights
    to a multiple of ``lanes``), made once per array."""
    def make(wf: np.ndarray) -> np.ndarray:
        t = wf.reshape(-1, og, wf.shape[1]).transpose(1, 2, 0)
        out = np.zeros(t.shape[:2] + (-(-t.shape[2] // lanes) * lanes,), np.float32)
        out[:, :, :t.shape[2]] = t
        return out
    return _made_once(w, ("channels", og, lanes), make)


_TILES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tiles(w: BfpTensor) -> _Tiles:
    """``w``'s layouts, made once per tensor."""
    t = _TILES.get(w)
    if t is None:
        t = _TILES[w] = _Tiles(w)
    return t


def weight_rows(w: BfpTensor, groups: int) -> np.ndarray:
    """int8 ``[G, O/G, J, B]``: the weights as a tiled product's broadcast operand."""
    o, kp = w.q.shape
    return w.q.reshape(groups, o // groups, kp // w.fmt.block_size, w.fmt.block_size)
