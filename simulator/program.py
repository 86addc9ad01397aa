# SPDX-License-Identifier: Apache-2.0
"""The device program (``.npub``): the "bitstream" a compiler makes and a device loads.

Layout (little endian; ``docs/isa.md`` has the byte-level table)::

    header   64 B   magic "NPUB", version, section count, header CRC-32, target fingerprint
    table    56 B per section: kind, offset, length, SHA-256 of the payload
    payload  each section 64-byte aligned

The same model compiled twice gives byte-identical files: no timestamps, JSON
with sorted keys, a deterministic section order.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from npusim.simulator import program_schema as schema
from npusim.simulator.config import ConfigError, DeviceConfig, _from_mapping
from npusim.simulator.fileio import atomic_write
from npusim.simulator.isa import (
    INSTRUCTION_BYTES,
    EncodingError,
    FieldWidths,
    Instruction,
    MvMul,
)
from npusim.simulator.program_check import CheckError, check_program
from npusim.simulator.program_schema import SchemaError, parse

MAGIC = b"NPUB"
VERSION = (2, 0)
ALIGN = 64
_HEADER = struct.Struct("<4sHHHHI32s16x")  # magic, major, minor, nsections, reserved, crc, fp
_ENTRY = struct.Struct("<IIQQ32s")  # kind, reserved, offset, length, sha256


class Section(IntEnum):
    INSTRUCTIONS = 1
    WEIGHTS = 2
    CONSTANTS = 3
    IO = 4
    TENSORS = 5
    METADATA = 6
    DEVICE = 7
    HOST = 8


OPTIONAL_SECTIONS = (Section.HOST,)


class ProgramError(ValueError):
    """A program file that cannot be loaded (corrupt, truncated, wrong version or target)."""


@dataclass(frozen=True)
class TensorDesc:
    """A named tensor at a DRAM address: a model input/output or a weight tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    addr: int
    nbytes: int

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "addr": self.addr, "nbytes": self.nbytes}

    @classmethod
    def from_json(cls, d: dict) -> TensorDesc:
        return cls(str(d["name"]), tuple(int(n) for n in d["shape"]), str(d["dtype"]),
                   int(d["addr"]), int(d["nbytes"]))


@dataclass(frozen=True, eq=False)
class HostOp:
    """Host work of one ``HOST_CALL``: an ONNX model (one op or a run of them) whose
    graph inputs and outputs are named like the tensors here."""

    name: str
    op: str
    model: bytes
    inputs: tuple[TensorDesc, ...]
    outputs: tuple[TensorDesc, ...]
    on_host: tuple[str, ...] = ()
    """Inputs and outputs that stay in host memory between host calls (their shape may
    depend on data; they have no DRAM address and never cross the host link)."""

    def in_dram(self, tensors: tuple[TensorDesc, ...]) -> tuple[TensorDesc, ...]:
        return tuple(t for t in tensors if t.name not in self.on_host)


def _host_bytes(ops: tuple[HostOp, ...]) -> bytes:
    """JSON table (u64 length first), then the models back to back."""
    table, offset = [], 0
    for h in ops:
        table.append({"name": h.name, "op": h.op, "model": [offset, len(h.model)],
                      "inputs": [t.to_json() for t in h.inputs],
                      "outputs": [t.to_json() for t in h.outputs], "on_host": list(h.on_host)})
        offset += len(h.model)
    head = json.dumps(table, sort_keys=True, separators=(",", ":")).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(h.model for h in ops)


def _host_ops(data: bytes) -> tuple[HostOp, ...]:
    if len(data) < 8:
        raise SchemaError("section HOST: shorter than its table's length field")
    (n,) = struct.unpack_from("<Q", data)
    if n > len(data) - 8:
        raise SchemaError(f"section HOST: table of {n} bytes runs past the section's end")
    table = parse(data[8:8 + n], schema.HOST, "HOST")
    base, size = 8 + n, len(data) - 8 - n
    ops = []
    for k, t in enumerate(table):
        off, length = t["model"]
        if off + length > size:
            raise SchemaError(f"section HOST: the model of host op {k} runs past the end")
        ops.append(HostOp(t["name"], t["op"], data[base + off:base + off + length],
                          tuple(TensorDesc.from_json(d) for d in t["inputs"]),
                          tuple(TensorDesc.from_json(d) for d in t["outputs"]),
                          tuple(t["on_host"])))
    return tuple(ops)


@dataclass(frozen=True, eq=False)
class Program:
    """A compiled program for one target device.

    ``weights`` and ``constants`` are the byte images placed at ``memory_map["weights"]``
    and ``memory_map["constants"]`` in DRAM; ``weight_tensors`` says where each
    matrix-unit weight lies in it and in which format.
    """

    target: DeviceConfig
    instructions: tuple[Instruction, ...]
    weights: bytes
    constants: bytes
    inputs: tuple[TensorDesc, ...]
    outputs: tuple[TensorDesc, ...]
    weight_tensors: tuple[TensorDesc, ...]
    layers: tuple[dict, ...]
    """One record per instruction: ``name``, ``op`` and the ONNX nodes it covers."""
    memory_map: dict[str, tuple[int, int]]
    """Region -> (base address, size in bytes)."""
    metadata: dict = field(default_factory=dict)
    host_ops: tuple[HostOp, ...] = ()
    """Ops placed on the host, in the order their ``HOST_CALL`` instructions name them."""

    @property
    def numerics(self) -> str:
        return self.target.numerics

    def layer_formats(self) -> dict[str, int]:
        """Matrix-unit layers (MV_MUL instructions) per format, as their weights are stored
        (a program may mix formats layer by layer)."""
        wbase = self.memory_map.get("weights", (0, 0))[0]
        dtype = {wbase + t.addr: t.dtype for t in self.weight_tensors}
        out: dict[str, int] = {}
        for i in self.instructions:
            if isinstance(i, MvMul) and i.weights in dtype:
                fmt = "fp32" if dtype[i.weights] == "float32" else dtype[i.weights]
                out[fmt] = out.get(fmt, 0) + 1
        return out

    @property
    def numerics_label(self) -> str:
        """The format, or ``mixed (a/b)`` for a program whose layers mix formats."""
        formats = self.layer_formats()
        if len(formats) > 1:
            return f"mixed ({'/'.join(sorted(formats))})"
        return self.numerics

    # --- serialization ---
    def to_bytes(self) -> bytes:
        widths = FieldWidths.for_device(self.target)
        def dump(obj):
            return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        sections = {
            Section.INSTRUCTIONS: b"".join(i.encode(widths) for i in self.instructions),
            Section.WEIGHTS: self.weights,
            Section.CONSTANTS: self.constants,
            Section.IO: dump({"inputs": [t.to_json() for t in self.inputs],
                              "outputs": [t.to_json() for t in self.outputs]}),
            Section.TENSORS: dump([t.to_json() for t in self.weight_tensors]),
            Section.METADATA: dump({"layers": list(self.layers),
                                    "memory_map": {k: list(v) for k, v in self.memory_map.items()},
                                    **self.metadata}),
            Section.DEVICE: dump(self.target.to_dict()),
        }
        if self.host_ops:
            sections[Section.HOST] = _host_bytes(self.host_ops)
        return pack_sections(sections, self.target.fingerprint())

    def save(self, path: str | Path) -> None:
        """Write atomically: a failed save leaves no partial file behind."""
        data = self.to_bytes()
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))

    @classmethod
    def load(cls, path: str | Path) -> Program:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise ProgramError(f"program file not found: {path}") from None
        except IsADirectoryError:
            raise ProgramError(f"program path is a directory: {path}") from None
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "program") -> Program:
        fp, raw = unpack_sections(data, where)
        try:
            device = parse(raw[Section.DEVICE], schema.DEVICE, "DEVICE")
            target = _from_mapping({k: v for k, v in device.items() if k != "name"},
                                   device["name"])
        except (SchemaError, ConfigError, TypeError) as exc:
            raise ProgramError(f"{where}: bad target description: {exc}") from None
        if target.fingerprint() != fp:
            raise ProgramError(f"{where}: target description does not match its fingerprint")
        widths = FieldWidths.for_device(target)
        code = raw[Section.INSTRUCTIONS]
        if len(code) % INSTRUCTION_BYTES:
            raise ProgramError(f"{where}: instruction section is not whole words")
        try:
            instrs = tuple(Instruction.decode(code[i:i + INSTRUCTION_BYTES], widths)
                           for i in range(0, len(code), INSTRUCTION_BYTES))
        except EncodingError as exc:
            raise ProgramError(f"{where}: bad instruction: {exc}") from None
        try:
            io = parse(raw[Section.IO], schema.IO, "IO")
            meta = parse(raw[Section.METADATA], schema.METADATA, "METADATA")
            weight_tensors = parse(raw[Section.TENSORS], schema.TENSORS, "TENSORS")
            host = _host_ops(raw[Section.HOST]) if Section.HOST in raw else ()
        except SchemaError as exc:
            raise ProgramError(f"{where}: {exc}") from None
        layers = tuple(meta.pop("layers"))
        mmap = {k: (int(v[0]), int(v[1])) for k, v in meta.pop("memory_map").items()}
        prog = cls(target, instrs, raw[Section.WEIGHTS], raw[Section.CONSTANTS],
                   tuple(TensorDesc.from_json(t) for t in io["inputs"]),
                   tuple(TensorDesc.from_json(t) for t in io["outputs"]),
                   tuple(TensorDesc.from_json(t) for t in weight_tensors),
                   layers, mmap, meta, host)
        prog.check(where)
        return prog

    def check(self, where: str = "program") -> None:
        """Raise :class:`ProgramError` unless every part of the program fits the others
        (:mod:`npusim.simulator.program_check`): what makes it safe to execute and to price."""
        try:
            check_program(self)
        except CheckError as exc:
            raise ProgramError(f"{where}: {exc}") from None


def pack_sections(sections: dict[int, bytes], fingerprint: bytes) -> bytes:
    """The container: header, section table (each payload's SHA-256), aligned payloads."""
    offset = align(_HEADER.size + _ENTRY.size * len(sections))
    table, payload = [], []
    for kind, data in sections.items():
        table.append(_ENTRY.pack(kind, 0, offset, len(data), hashlib.sha256(data).digest()))
        pad = align(len(data)) - len(data)
        payload.append(data + b"\0" * pad)
        offset += len(data) + pad
    table_bytes = b"".join(table)
    crc = zlib.crc32(_HEADER.pack(MAGIC, *VERSION, len(sections), 0, 0, fingerprint)
                     + table_bytes)
    head = _HEADER.pack(MAGIC, *VERSION, len(sections), 0, crc, fingerprint) + table_bytes
    return head + b"\0" * (align(len(head)) - len(head)) + b"".join(payload)


def unpack_sections(data: bytes, where: str = "program") -> tuple[bytes, dict[Section, bytes]]:
    """Inverse of :func:`pack_sections`, checking the magic, version, CRC and every
    section's SHA-256: ``(target fingerprint, payload of each known section)``."""
    if data[:4] != MAGIC[:len(data)] or not data:
        raise ProgramError(f"{where}: not an npusim program (bad magic)")
    if len(data) < _HEADER.size:
        raise ProgramError(f"{where}: truncated program (header cut short)")
    _, major, minor, count, reserved, crc, fp = _HEADER.unpack_from(data)
    if major != VERSION[0]:
        raise ProgramError(f"{where}: program format version {major}.{minor} is not "
                           f"supported (this build reads {VERSION[0]}.x)")
    table_end = _HEADER.size + _ENTRY.size * count
    if len(data) < table_end:
        raise ProgramError(f"{where}: truncated program (section table cut short)")
    # the CRC covers the header as stored (its own field zeroed) and the table
    head = data[:12] + b"\0\0\0\0" + data[16:_HEADER.size]
    if zlib.crc32(head + data[_HEADER.size:table_end]) != crc or reserved \
            or any(data[48:_HEADER.size]):
        raise ProgramError(f"{where}: corrupt program header (CRC mismatch)")
    raw: dict[Section, bytes] = {}
    for i in range(count):
        kind, _, off, length, digest = _ENTRY.unpack_from(data, _HEADER.size + i * _ENTRY.size)
        name = Section(kind).name if kind in Section._value2member_map_ else kind
        if off + length > len(data):
            raise ProgramError(f"{where}: truncated program (section {name} runs past the end)")
        payload = data[off:off + length]
        if hashlib.sha256(payload).digest() != digest:
            raise ProgramError(f"{where}: corrupt program (section {name} checksum mismatch)")
        if kind in Section._value2member_map_:
            if Section(kind) in raw:
                raise ProgramError(f"{where}: section {name} appears twice")
            raw[Section(kind)] = payload
    missing = [s.name for s in Section if s not in raw and s not in OPTIONAL_SECTIONS]
    if missing:
        raise ProgramError(f"{where}: program lacks section(s) {', '.join(missing)}")
    return fp, raw


def align(n: int) -> int:
    """``n`` rounded up to the 64-byte alignment of sections and DRAM regions."""
    return -(-n // ALIGN) * ALIGN
