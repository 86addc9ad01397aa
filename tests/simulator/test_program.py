# SPDX-License-Identifier: Apache-2.0
"""The ``.npub`` program file and the device configurations it is built for.

Round trips, determinism, every way a file can be damaged and the one-line error
each gives, atomic saves, target checks; then ``load_device`` and the fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler import compile_model
from npusim.simulator import fileio
from npusim.simulator import program as program_module
from npusim.simulator.config import ConfigError, DeviceConfig, MvuConfig, load_device, preset_names
from npusim.simulator.device import Device
from npusim.simulator.numerics import FORMAT_NAMES
from npusim.simulator.program import Program, ProgramError, Section

# The documented layout (docs/isa.md), spelled out here rather than imported.
REQUIRED = [k for k in Section if k not in program_module.OPTIONAL_SECTIONS]
HEADER = struct.Struct("<4sHHHHI32s16x")  # magic, major, minor, count, reserved, crc, fp
ENTRY = struct.Struct("<IIQQ32s")  # kind, reserved, offset, length, sha256
CRC_OFFSET = 12
RESERVED_HEADER_BYTES = [*range(10, 12), *range(48, HEADER.size)]


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv 3x3 pad 1 (+bias) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(seed)
    init = {"w": rng.standard_normal((4, 3, 3, 3)) * 0.3, "b": rng.standard_normal(4) * 0.1,
            "fw": rng.standard_normal((64, 10)) * 0.2, "fb": rng.standard_normal(10) * 0.1}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2],
                         name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc"),
        helper.make_node("Softmax", ["g"], ["y"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def compile_tiny() -> Program:
    return compile_model(tiny_cnn(), device="tiny", numerics="msfp12")


@pytest.fixture(scope="module")
def program() -> Program:
    return compile_tiny()


@pytest.fixture(scope="module")
def data(program) -> bytes:
    return program.to_bytes()


def sections(data: bytes) -> dict[Section, tuple[int, int, bytes]]:
    """Section -> (offset, length, sha256) read from the table."""
    count = HEADER.unpack_from(data)[3]
    out = {}
    for i in range(count):
        kind, _, off, length, digest = ENTRY.unpack_from(data, HEADER.size + i * ENTRY.size)
        out[Section(kind)] = (off, length, digest)
    return out


def table_end(data: bytes) -> int:
    return HEADER.size + ENTRY.size * HEADER.unpack_from(data)[3]


def reseal(data: bytes | bytearray) -> bytes:
    """Recompute the header CRC-32 (over the header with crc = 0, then the table)."""
    magic, major, minor, count, _, _, fp = HEADER.unpack_from(data)
    crc = zlib.crc32(HEADER.pack(magic, major, minor, count, 0, 0, fp)
                     + bytes(data[HEADER.size:table_end(data)]))
    out = bytearray(data)
    struct.pack_into("<I", out, CRC_OFFSET, crc)
    return bytes(out)


def flipped(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0xFF
    return bytes(out)


def load_error(data: bytes, tmp_path: Path, name: str = "bad.npub") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ProgramError) as exc:
        Program.load(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg.replace(str(path), "<path>")  # tmp_path holds the test name: keep it out


# --- round trip and determinism ---

def test_save_load_preserves_everything(program, tmp_path):
    path = tmp_path / "tiny.npub"
    program.save(path)
    back = Program.load(path)
    assert back.target == program.target and back.target.name == "tiny"
    assert back.numerics == "msfp12"
    assert back.instructions == program.instructions
    assert back.weights == program.weights and len(back.weights) > 0
    assert back.constants == program.constants and len(back.constants) > 0
    assert back.inputs == program.inputs
    assert back.outputs == program.outputs
    assert back.weight_tensors == program.weight_tensors and len(back.weight_tensors) == 2
    assert back.layers == program.layers
    assert back.memory_map == program.memory_map
    assert back.metadata == program.metadata and back.metadata["model"] == "tiny_cnn"
    assert all(isinstance(t.shape, tuple) for t in back.inputs + back.outputs)
    assert all(isinstance(v, tuple) for v in back.memory_map.values())
    assert back.to_bytes() == path.read_bytes()


def test_compiling_twice_gives_identical_files(tmp_path):
    compile_tiny().save(tmp_path / "a.npub")
    compile_tiny().save(tmp_path / "b.npub")
    a, b = (tmp_path / "a.npub").read_bytes(), (tmp_path / "b.npub").read_bytes()
    assert len(a) > 0 and a == b


def test_host_section_round_trips(tmp_path):
    m = helper.make_model(helper.make_graph(
        [helper.make_node("Cos", ["x"], ["y"], name="cos")], "g",
        [helper.make_tensor_value_info("x", 1, [4])], [helper.make_tensor_value_info("y", 1, [4])]),
        opset_imports=[helper.make_opsetid("", 17)])
    prog = compile_model(m, device="tiny")
    back = Program.from_bytes(prog.to_bytes())
    assert len(back.host_ops) == 1 and back.host_ops[0].model == prog.host_ops[0].model
    assert back.host_ops[0].inputs == prog.host_ops[0].inputs
    assert back.host_ops[0].outputs == prog.host_ops[0].outputs
    assert back.host_ops[0].on_host == prog.host_ops[0].on_host == ("y",)


def test_file_layout(program, data):
    magic, major, minor, count, reserved, crc, fp = HEADER.unpack_from(data)
    assert (magic, major, minor) == (b"NPUB", *program_module.VERSION)
    assert reserved == 0 and fp == program.target.fingerprint()
    required = [k for k in Section if k not in program_module.OPTIONAL_SECTIONS]
    assert list(sections(data)) == required and count == len(required)  # no host ops here
    assert crc == struct.unpack_from("<I", reseal(data), CRC_OFFSET)[0]
    end = table_end(data)
    for off, length, digest in sections(data).values():
        assert off % 64 == 0 and off >= end
        assert hashlib.sha256(data[off:off + length]).digest() == digest
        end = off + length
    assert len(data) % 64 == 0
    assert len(sections(data)[Section.INSTRUCTIONS][2]) == 32
    assert sections(data)[Section.INSTRUCTIONS][1] == 64 * len(program.instructions)
    device = json.loads(data[slice(*_span(data, Section.DEVICE))])
    assert device == program.target.to_dict()


def _span(data: bytes, kind: Section) -> tuple[int, int]:
    off, length, _ = sections(data)[kind]
    return off, off + length


# --- damaged files ---

def test_missing_file(tmp_path):
    with pytest.raises(ProgramError, match="not found") as exc:
        Program.load(tmp_path / "nope.npub")
    assert "nope.npub" in str(exc.value)


def test_directory(tmp_path):
    with pytest.raises(ProgramError, match="directory"):
        Program.load(tmp_path)


def test_empty_file(tmp_path):
    msg = load_error(b"", tmp_path)
    assert "not an npusim program" in msg and "magic" in msg


def test_random_bytes(tmp_path):
    msg = load_error(random.Random(7).randbytes(4096), tmp_path)
    assert "bad magic" in msg


@pytest.mark.parametrize("where", ["table-start", "table-middle", "table-last-byte"])
def test_truncated_in_table(data, tmp_path, where):
    cut = {"table-start": HEADER.size, "table-middle": HEADER.size + 3 * ENTRY.size + 10,
           "table-last-byte": table_end(data) - 1}[where]
    msg = load_error(data[:cut], tmp_path)
    assert "truncated" in msg and "table" in msg


@pytest.mark.parametrize("kind", REQUIRED, ids=[s.name for s in REQUIRED])
def test_truncated_in_payload(data, tmp_path, kind):
    start, end = _span(data, kind)
    for cut in (start, (start + end) // 2, end - 1):
        msg = load_error(data[:cut], tmp_path)
        assert "truncated" in msg and f"section {kind.name}" in msg


@pytest.mark.parametrize("cut", [30, HEADER.size - 1])
def test_truncated_in_header(data, tmp_path, cut):
    assert "truncated" in load_error(data[:cut], tmp_path)


@pytest.mark.parametrize("kind", REQUIRED, ids=[s.name for s in REQUIRED])
def test_flipped_payload_byte_names_section(data, tmp_path, kind):
    start, end = _span(data, kind)
    for index in (start, (start + end) // 2, end - 1):
        msg = load_error(flipped(data, index), tmp_path)
        assert f"section {kind.name} checksum" in msg and "corrupt" in msg


def test_flipped_header_or_table_byte(data, tmp_path):
    """Every byte of the header and table that carries information is checked."""
    for index in range(table_end(data)):
        if index in RESERVED_HEADER_BYTES:
            continue
        with pytest.raises(ProgramError) as exc:
            Program.from_bytes(flipped(data, index), "f.npub")
        msg = str(exc.value)
        if index < 4:
            assert "bad magic" in msg, index
        elif index < 6:
            assert "version" in msg, index
        elif index in (8, 9):  # section count: the table now looks cut short, or the CRC fails
            assert "CRC" in msg or "truncated" in msg, index
        else:
            assert "corrupt program header (CRC mismatch)" in msg, index
    assert "CRC" in load_error(flipped(data, CRC_OFFSET), tmp_path)


def test_flipped_reserved_header_byte(data):
    for index in RESERVED_HEADER_BYTES:
        with pytest.raises(ProgramError):
            Program.from_bytes(flipped(data, index), "f.npub")


def test_wrong_major_version(data, tmp_path):
    bad = bytearray(data)
    struct.pack_into("<H", bad, 4, program_module.VERSION[0] + 1)
    msg = load_error(reseal(bad), tmp_path)
    assert f"version {program_module.VERSION[0] + 1}.0" in msg and "not supported" in msg
    assert f"{program_module.VERSION[0]}.x" in msg


def test_newer_minor_version_loads(program, data):
    newer = bytearray(data)
    struct.pack_into("<H", newer, 6, program_module.VERSION[1] + 3)
    assert Program.from_bytes(reseal(newer)).instructions == program.instructions


# --- target checks ---

def test_loads_onto_its_own_device(program):
    Device(load_device("tiny")).load(program)


@pytest.mark.parametrize("other, words", [
    ("brainwave-s10", ["'tiny'", "'brainwave-s10'", "msfp12", "msfp8"]),
    ("tiny-msfp16", ["'tiny'", "msfp12", "msfp16"]),
])
def test_other_device_refuses_program(program, tmp_path, other, words):
    cfg = (load_device("tiny").replace(numerics="msfp16") if other == "tiny-msfp16"
           else load_device(other))
    program.save(tmp_path / "p.npub")
    with pytest.raises(ProgramError, match="built for device") as exc:
        Device(cfg).load(Program.load(tmp_path / "p.npub"))
    msg = str(exc.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg


# --- atomic save ---

def test_save_into_missing_directory(program, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "p.npub"
    with pytest.raises(OSError):
        program.save(target)
    assert list(tmp_path.iterdir()) == []


def test_save_to_relative_name(program, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    program.save("p.npub")
    assert sorted(os.listdir(tmp_path)) == ["p.npub"]
    assert Program.load("p.npub").instructions == program.instructions


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_failed_serialization_leaves_directory_unchanged(program, tmp_path, monkeypatch):
    (tmp_path / "old.npub").write_bytes(b"previous contents")
    before = _snapshot(tmp_path)

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Program, "to_bytes", boom)
    for name in ("new.npub", "old.npub"):
        with pytest.raises(RuntimeError, match="disk on fire"):
            program.save(tmp_path / name)
        assert _snapshot(tmp_path) == before


def test_failed_write_leaves_no_temp_file(program, tmp_path, monkeypatch):
    (tmp_path / "old.npub").write_bytes(b"previous contents")
    before = _snapshot(tmp_path)

    def fail(src, dst):
        raise OSError("no space left on device")

    monkeypatch.setattr(fileio.os, "replace", fail)  # the rename that save() goes through
    for name in ("new.npub", "old.npub"):
        with pytest.raises(OSError, match="no space"):
            program.save(tmp_path / name)
        assert _snapshot(tmp_path) == before


def test_saved_file_honours_umask(program, tmp_path):
    old = os.umask(0o022)
    try:
        program.save(tmp_path / "p.npub")
    finally:
        os.umask(old)
    assert (tmp_path / "p.npub").stat().st_mode & 0o777 == 0o644


# --- device configurations ---

TINY_FIELDS = {k: v for k, v in load_device("tiny").to_dict().items() if k != "name"}


def config_error(tmp_path: Path, text: str, suffix: str = ".toml") -> str:
    path = tmp_path / f"dev{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_device(path)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg.replace(str(tmp_path), "<tmp>")  # tmp_path holds the test name: keep it out


def toml_of(fields: dict) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    cfg = load_device(name)
    assert isinstance(cfg, DeviceConfig) and cfg.name == name
    assert cfg.numerics in FORMAT_NAMES and cfg.peak_macs_per_cycle > 0
    assert load_device(cfg) is cfg


def test_default_device():
    assert load_device(None) == load_device("brainwave-s10")


def test_toml_with_base_and_overrides(tmp_path):
    path = tmp_path / "mydev.toml"
    path.write_text('base = "tiny"\nnative_dim = 16\nnumerics = "msfp16"\n')
    cfg = load_device(path)
    assert cfg == load_device("tiny").replace(name="mydev", native_dim=16, numerics="msfp16")
    assert load_device(str(path)) == cfg


def test_json_file(tmp_path):
    path = tmp_path / "fromjson.json"
    path.write_text(json.dumps(TINY_FIELDS))
    assert load_device(path) == load_device("tiny").replace(name="fromjson")
    without_dram = {k: v for k, v in TINY_FIELDS.items() if k != "dram_mib"}
    path.write_text(json.dumps(without_dram))
    assert load_device(path).dram_mib == DeviceConfig.__dataclass_fields__["dram_mib"].default


def test_unknown_preset():
    with pytest.raises(ConfigError) as exc:
        load_device("no-such-device")
    msg = str(exc.value)
    assert "unknown device 'no-such-device'" in msg and "tiny" in msg and "\n" not in msg


def test_unknown_field(tmp_path):
    msg = config_error(tmp_path, 'base = "tiny"\nwarp_drive = 9\n')
    assert "unknown field(s) warp_drive" in msg


def test_missing_field(tmp_path):
    fields = {k: v for k, v in TINY_FIELDS.items() if k != "clock_mhz"}
    assert "missing field(s) clock_mhz" in config_error(tmp_path, toml_of(fields))


@pytest.mark.parametrize("field, value, bounds", [
    ("native_dim", 0, "[1, 2147483647]"), ("tiles", -2, "[1, "), ("tiles", 2**40, "[1, "),
    ("clock_mhz", 0.0, "[1e-06, 1e+09]"), ("dram_gbps", -1.5, "[1e-06, "),
    ("clock_mhz", 1e300, "1e+09]"), ("clock_mhz", "nan", "[1e-06, ")])
def test_out_of_range_number(tmp_path, field, value, bounds):
    """Every rate derived from the fields stays finite and non-zero (no overflow in the
    timing model), whatever a hostile program's target says."""
    msg = config_error(tmp_path, f'base = "tiny"\n{field} = {value}\n')
    assert f"'{field}'" in msg and bounds in msg and str(value) in msg


def test_unknown_numerics(tmp_path):
    msg = config_error(tmp_path, 'base = "tiny"\nnumerics = "msfp99"\n')
    assert "numerics" in msg and "msfp99" in msg


def test_unparsable_toml(tmp_path):
    msg = config_error(tmp_path, "native_dim = = 8\n")
    assert "cannot parse" in msg and "<tmp>/dev.toml" in msg


def test_unparsable_json(tmp_path):
    msg = config_error(tmp_path, '{"native_dim": 8,', suffix=".json")
    assert "cannot parse" in msg and "<tmp>/dev.json" in msg


def _changed(value):
    if isinstance(value, str):
        return next(f for f in FORMAT_NAMES if f != value)
    return value * 2 if isinstance(value, int) else value * 1.5


def test_fingerprint_covers_every_field_but_the_name():
    base = load_device("tiny")
    fp = base.fingerprint()
    assert len(fp) == 32
    assert base.replace(name="renamed").fingerprint() == fp
    for f in dataclasses.fields(DeviceConfig):
        if f.name in ("name", "matrix_unit", "mvu"):
            continue
        changed = base.replace(**{f.name: _changed(getattr(base, f.name))})
        assert changed.fingerprint() != fp, f.name
    # the matrix-vector unit's figures, each of them
    npu = load_device("intel-npu")
    assert npu.fingerprint() != npu.replace(matrix_unit="systolic", mvu=None).fingerprint()
    for f in dataclasses.fields(MvuConfig):
        mvu = dataclasses.replace(npu.mvu, **{f.name: getattr(npu.mvu, f.name) + 1})
        assert npu.replace(mvu=mvu).fingerprint() != npu.fingerprint(), f.name


def test_systolic_devices_keep_their_description():
    """The matrix-unit fields appear only for a matrix-vector unit, so a program built for a
    systolic device before they existed still loads."""
    tiny = load_device("tiny")
    assert "mvu" not in tiny.to_dict() and "matrix_unit" not in tiny.to_dict()
    assert tiny.fingerprint().hex().startswith("5c27095edbd5")
    with pytest.raises(ConfigError, match="exactly when its matrix_unit"):
        tiny.replace(matrix_unit="mvu")
    with pytest.raises(ConfigError, match="matrix_unit"):
        tiny.replace(matrix_unit="tpu")
    with pytest.raises(ConfigError, match="mvu.cores"):
        load_device("intel-npu").replace(mvu={**load_device("intel-npu").to_dict()["mvu"],
                                              "cores": 0})
    with pytest.raises(ConfigError, match="exactly the fields"):
        load_device("intel-npu").replace(mvu={"cores": 2})


def test_fingerprint_ignores_int_versus_float(tmp_path):
    path = tmp_path / "same.toml"
    path.write_text('base = "tiny"\nclock_mhz = 100\n')
    cfg = load_device(path)
    assert cfg == load_device("tiny").replace(name="same")
    assert cfg.fingerprint() == load_device("tiny").fingerprint()
