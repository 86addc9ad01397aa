# SPDX-License-Identifier: Apache-2.0
"""The instruction set: encode/decode round trips, range checks, word layout, docstrings."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from npusim.simulator.config import load_device, preset_names
from npusim.simulator.isa import (
    INSTRUCTION_BYTES,
    INSTRUCTIONS,
    OPCODE_BITS,
    EncodingError,
    FieldWidths,
    Instruction,
    MvMul,
    Opcode,
    VMove,
    VRelu,
    VvAlu,
    bits_f32,
    f32_bits,
    from_u32,
    to_u32,
)

PRESETS = preset_names()
CLASSES = {cls.__name__: cls for cls in INSTRUCTIONS}


def widths_of(preset: str) -> FieldWidths:
    return FieldWidths.for_device(load_device(preset))


def field_bits(cls: type[Instruction], widths: FieldWidths) -> list[tuple[str, int]]:
    """(name, bits) of each field of ``cls`` in declaration order."""
    return [(f.name, getattr(widths, f.metadata["kind"])) for f in dataclasses.fields(cls)]


def used_bits(cls: type[Instruction], widths: FieldWidths) -> int:
    return OPCODE_BITS + sum(bits for _, bits in field_bits(cls, widths))


def roundtrip(instr: Instruction, widths: FieldWidths) -> None:
    word = instr.encode(widths)
    assert isinstance(word, bytes) and len(word) == INSTRUCTION_BYTES
    assert word[0] == int(instr.OPCODE)  # opcode in the low 8 bits
    back = Instruction.decode(word, widths)
    assert type(back) is type(instr)
    assert back == instr
    assert back.encode(widths) == word


@pytest.fixture(params=PRESETS)
def widths(request) -> FieldWidths:
    return widths_of(request.param)


@pytest.fixture(params=list(CLASSES), ids=list(CLASSES))
def cls(request) -> type[Instruction]:
    return CLASSES[request.param]


def test_every_opcode_has_a_class_and_back():
    assert {c.OPCODE for c in INSTRUCTIONS} == set(Opcode)
    assert len(INSTRUCTIONS) == len(Opcode)


@pytest.mark.parametrize("preset", PRESETS)
def test_address_width_covers_the_whole_dram(preset):
    cfg = load_device(preset)
    w = FieldWidths.for_device(cfg)
    last = cfg.dram_mib * 2**20 - 1
    assert last < 2**w.addr
    assert last >= 2 ** (w.addr - 1)  # and no wider than needed


def test_roundtrip_zero(cls, widths):
    roundtrip(cls(**{f.name: 0 for f in dataclasses.fields(cls)}), widths)


def test_roundtrip_all_fields_at_max(cls, widths):
    roundtrip(cls(**{name: 2**bits - 1 for name, bits in field_bits(cls, widths)}), widths)


def test_each_field_at_max_alone_lands_in_its_bits(cls, widths):
    """Fields are packed LSB first in declaration order, right after the opcode."""
    layout = field_bits(cls, widths)
    pos = OPCODE_BITS
    for name, bits in layout:
        values = {n: 0 for n, _ in layout}
        values[name] = 2**bits - 1
        instr = cls(**values)
        word = int.from_bytes(instr.encode(widths), "little")
        assert word == int(cls.OPCODE) | ((2**bits - 1) << pos), name
        roundtrip(instr, widths)
        pos += bits


def test_roundtrip_random_values(cls, widths):
    rng = random.Random(1234)
    layout = field_bits(cls, widths)
    for _ in range(50):
        roundtrip(cls(**{name: rng.randrange(2**bits) for name, bits in layout}), widths)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_instruction_fits_in_a_word(preset):
    w = widths_of(preset)
    for c in INSTRUCTIONS:
        assert used_bits(c, w) <= INSTRUCTION_BYTES * 8, c.__name__


@pytest.mark.parametrize("cls_name", [n for n, c in CLASSES.items() if dataclasses.fields(c)])
def test_out_of_range_field_names_the_field(cls_name, widths):
    cls = CLASSES[cls_name]
    layout = field_bits(cls, widths)
    for name, bits in layout:
        for bad in (2**bits, 2**bits + 12345, -1, -(2**bits)):
            values = {n: 0 for n, _ in layout}
            values[name] = bad
            with pytest.raises(EncodingError, match=f"field '{name}'") as exc:
                cls(**values).encode(widths)
            msg = str(exc.value)
            assert str(bad) in msg and f"{bits} bits" in msg and "\n" not in msg


def test_decode_unknown_opcode():
    w = widths_of(PRESETS[0])
    known = {int(op) for op in Opcode}
    for code in range(2**OPCODE_BITS):
        if code in known:
            continue
        with pytest.raises(EncodingError, match=f"unknown opcode 0x{code:02x}"):
            Instruction.decode(bytes([code]) + bytes(INSTRUCTION_BYTES - 1), w)


def test_decode_bits_past_last_field(cls, widths):
    end = used_bits(cls, widths)
    zero = cls(**{f.name: 0 for f in dataclasses.fields(cls)})
    good = int.from_bytes(zero.encode(widths), "little")
    for bit in sorted({end, (end + INSTRUCTION_BYTES * 8) // 2, INSTRUCTION_BYTES * 8 - 1}):
        word = (good | (1 << bit)).to_bytes(INSTRUCTION_BYTES, "little")
        with pytest.raises(EncodingError, match="past its last field"):
            Instruction.decode(word, widths)


@pytest.mark.parametrize("size", [0, 1, INSTRUCTION_BYTES - 1, INSTRUCTION_BYTES + 1])
def test_decode_wrong_word_size(size):
    data = bytes([int(Opcode.END_CHAIN)]) + bytes(max(size - 1, 0))
    with pytest.raises(EncodingError, match=f"{size} bytes"):
        Instruction.decode(data[:size], widths_of(PRESETS[0]))


def test_widths_matter_for_decoding():
    """A word only decodes with the widths it was encoded with (addr differs per preset)."""
    small, big = (widths_of(p) for p in ("tiny", "brainwave-s10"))
    assert small.addr != big.addr
    instr = VRelu(src=5, dst=7, length=9)
    assert Instruction.decode(instr.encode(small), big) != instr


def test_every_instruction_documents_its_semantics(cls):
    doc = cls.__dict__.get("__doc__") or ""
    # dataclass() fills a missing docstring with the signature: that is not documentation
    assert doc and not doc.startswith(f"{cls.__name__}("), cls.__name__
    assert len(doc.strip()) >= 20
    names = [f.name for f in dataclasses.fields(cls)]
    if names:
        assert any(n in doc for n in names), f"{cls.__name__} docstring names none of its fields"


@pytest.mark.parametrize("bad", [1.5, -0.5])
def test_non_integer_field_is_refused(bad):
    with pytest.raises(EncodingError, match="field 'src'"):
        VRelu(src=bad, dst=0, length=1).encode(widths_of("tiny"))


def test_signed_strides_round_trip_through_their_fields():
    for v in (0, 1, -1, 7, -7, 2**31 - 1, -(2**31)):
        assert from_u32(to_u32(v)) == v and 0 <= to_u32(v) < 2**32
    assert to_u32(-1) == 0xFFFFFFFF and to_u32(-(2**31)) == 0x80000000
    for bad in (2**31, -(2**31) - 1):
        with pytest.raises(EncodingError, match=str(bad)):
            to_u32(bad)


def test_fp32_bit_patterns():
    assert f32_bits(0.01) == 0x3C23D70A and f32_bits(-0.0) == 0x80000000
    assert bits_f32(0x3F800000) == 1.0 and bits_f32(f32_bits(1e-5)) == float(np.float32(1e-5))


def test_v_move_negative_strides_round_trip(widths):
    extremes = (-(2**31), -(2**31) + 1, -1, 0, 1, 2**31 - 1)
    for k, s in enumerate(extremes):
        strides = [to_u32(extremes[(k + j) % len(extremes)]) for j in range(6)]
        instr = VMove(2**widths.addr - 1, 0, 1, 2**32 - 1, 0, 3, 5, 7, *strides)
        roundtrip(instr, widths)
        back = Instruction.decode(instr.encode(widths), widths)
        assert back.strides == tuple(from_u32(u) for u in strides)
        assert back.dims == (1, 2**32 - 1, 0, 3, 5, 7)


def test_changed_layouts():
    """VV_ALU lost its Broadcast fields; MV_MUL's input dilation sits before the flags, and
    its clip after them (a program without the clip decodes as before: zeros)."""
    names = [f.name for f in dataclasses.fields(VvAlu)]
    assert names == ["src0", "src1", "dst", "length", "op", "rev", "div", "mod"]
    names = [f.name for f in dataclasses.fields(MvMul)]
    assert names[names.index("dilation_w"):] == ["dilation_w", "in_dil_h", "in_dil_w", "relu",
                                                  "has_residual", "pinned", "clip", "clip_lo",
                                                  "clip_hi"]
    w = widths_of("brainwave-s10")
    assert used_bits(MvMul, w) == 433 and used_bits(VvAlu, w) == 212
    assert max(used_bits(c, w) for c in INSTRUCTIONS) == used_bits(VMove, w) == 458
