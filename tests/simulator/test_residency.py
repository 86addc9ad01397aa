# SPDX-License-Identifier: Apache-2.0
"""npusim.simulator.residency: what each instruction loads from DRAM and stores there."""

from __future__ import annotations

from npusim.simulator.residency import plan
from npusim.simulator.timing import Operand, Work

KIB = 1024


def _vector(reads, writes) -> Work:
    return Work("vector", (1,), reads=tuple(reads), writes=tuple(writes))


def test_a_slice_of_a_tensor_in_dram_loads_only_its_bytes():
    """A tensor too large for the activation memory streams to DRAM; an instruction that
    reads one slice of it (a time step of a recurrent layer's input products) loads that
    slice, every time, and the tensor stays in DRAM."""
    big = Operand(0, 64 * KIB)
    works = [_vector([], [big]),
             _vector([Operand(8 * KIB, KIB)], [Operand(100 * KIB, KIB)]),
             _vector([Operand(16 * KIB, KIB)], [Operand(102 * KIB, KIB)]),
             _vector([big], [Operand(200 * KIB, 64 * KIB)])]
    tr = plan(works, ["big", "a", "b", "c"], capacity=16 * KIB)
    assert tr[0].store_bytes == 64 * KIB            # it streams out as it is made
    assert tr[1].load_bytes == KIB and tr[1].load_after == (0,)
    assert tr[2].load_bytes == KIB                  # not kept on chip by the first slice
    assert tr[3].load_bytes == 64 * KIB             # a whole read loads the whole tensor


def test_a_tensor_on_chip_is_read_in_place():
    t = Operand(0, 4 * KIB)
    works = [_vector([], [t]), _vector([Operand(KIB, KIB)], [Operand(8 * KIB, KIB)])]
    tr = plan(works, ["t", "u"], capacity=64 * KIB)
    assert tr[1].load_bytes == 0 and tr[1].after == (0,)


def test_a_slice_of_a_tensor_that_fits_brings_it_whole():
    """A tensor the host wrote is in DRAM; when its whole fits in the room left beside the
    live tensors, the first slice read brings it all in, and the next slices are free."""
    x = Operand(0, 8 * KIB)
    works = [Work("host", writes=(x,), host_bytes=x.nbytes, host_transfers=1),
             _vector([Operand(0, KIB)], [Operand(100 * KIB, KIB)]),
             _vector([Operand(4 * KIB, KIB)], [Operand(102 * KIB, KIB)])]
    tr = plan(works, ["x", "a", "b"], capacity=64 * KIB)
    assert tr[1].load_bytes == 8 * KIB
    assert tr[2].load_bytes == 0 and tr[2].after == (0,)  # read on chip
