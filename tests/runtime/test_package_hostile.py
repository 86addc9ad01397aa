# SPDX-License-Identifier: Apache-2.0
"""Hostile packages (a regression per defect an outside fuzzer found, and a fuzz test:
a load succeeds or raises one PipelineError, never writes outside its temporary
directory) and signed packages. Most use a package of one accelerator stage: no
TensorFlow, milliseconds a load."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import struct
import tempfile
import unittest.mock
import warnings
import zipfile

import pytest
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from onnx_helpers import small_featurizer

from npusim.compiler import compile_model
from npusim.runtime.cli import build_parser, main
from npusim.runtime.serving import package
from npusim.runtime.serving.package import (
    PackageError,
    PackageLimits,
    extract_package,
    load_package,
    save_package,
)
from npusim.runtime.serving.pipeline import AcceleratorStage, ModelDefinition, PipelineError
from npusim.runtime.serving.signing import generate_keypair

PROGRAM = "stages/0-featurizer.npub"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    prog = compile_model(small_featurizer(), "brainwave-s10")
    model = ModelDefinition("tiny", 1, [AcceleratorStage(prog)])
    keys = {who: generate_keypair(d / who) for who in ("alice", "mallory")}
    plain = save_package(model, d / "plain.zip")
    signed = save_package(model, d / "signed.zip", sign_key=keys["alice"][0])
    with zipfile.ZipFile(plain) as z:
        files = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(files.pop("manifest.json"))
    return {"model": model, "plain": plain, "signed": signed, "keys": keys,
            "manifest": manifest, "files": files, "entries": list(files.items())}


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    """Every temporary directory of the test lands here, and must be gone after it."""
    d = tmp_path / "scratch"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    yield d
    assert [p for p in d.iterdir() if p.suffix != ".py"] == []  # TF autograph leaves .py files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_pkg(path, entries, manifest=None, rehash=True, sign=None):
    """A package of ``entries`` ([(name or ZipInfo, data)]), its manifest's checksums
    recomputed (``rehash``) so that a change gets past them, signed with ``sign``."""
    m = dict(manifest) if isinstance(manifest, dict) else manifest
    if rehash and isinstance(m, dict):
        m["files"] = {getattr(n, "filename", n): sha(d) for n, d in entries}
    text = m if isinstance(m, bytes) else json.dumps(m).encode()
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as z:
        warnings.simplefilter("ignore")  # "Duplicate name"
        if m is not None:
            z.writestr("manifest.json", text, zipfile.ZIP_DEFLATED)
        if sign is not None:
            from npusim.runtime.serving.signing import load_private_key, sign_manifest

            z.writestr("manifest.sig", sign_manifest(load_private_key(sign), text))
        for name, data in entries:
            z.writestr(name, data)
    return path


def patch(path, name, **fields):
    """Set header fields of entry ``name`` in its local and its central header alike."""
    offsets = {"flags": (6, 8), "method": (8, 10), "csize": (18, 20), "usize": (22, 24)}
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(name).header_offset
        central = data.index(name.encode(), z.start_dir) - 46  # the name ends the record
    for f, v in fields.items():
        fmt = "<H" if f in ("flags", "method") else "<I"
        struct.pack_into(fmt, data, local + offsets[f][0], v)
        struct.pack_into(fmt, data, central + offsets[f][1], v)
    path.write_bytes(bytes(data))
    return path


def refused(path, fragment, **kw):
    with pytest.raises(PackageError, match=fragment) as err:
        load_package(path, **kw)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


# --- zip slip and entries that cannot be files ------------------------------------------

@pytest.mark.parametrize("evil", [
    "stages/0-pre/{target}", "{target}", "stages/../../escaped", "stages/./x",
    "stages\\..\\x", "C:/escaped", "stages/a:b", "stages/a\nb", "stages/a\x7fb",
    "stages/" + "a" * 300])
def test_unsafe_entry_names(base, tmp_path, evil):
    target = tmp_path / "escaped"
    name = evil.format(target=target)
    bad = write_pkg(tmp_path / "bad.zip", [*base["entries"], (name, b"x")], base["manifest"])
    refused(bad, "unsafe file path")
    assert not target.exists()


def test_extraction_stays_inside_its_root(base, tmp_path, monkeypatch):
    """Defence in depth: with the name checks switched off, '..' is still caught."""
    from npusim.runtime.serving import manifest

    monkeypatch.setattr(package, "name_problem", lambda n: None)
    monkeypatch.setattr(manifest, "name_problem", lambda n: None)
    m = dict(base["manifest"], tensorflow="2.0", stages=[dict(
        base["manifest"]["stages"][0], kind="tensorflow", path="stages/t")])
    del m["stages"][0]["target"]
    entries = [("stages/t/saved_model.pb", b"x"), ("stages/t/../../../escaped", b"x")]
    with pytest.raises(PackageError, match="leaves the extraction directory"):
        extract_package(write_pkg(tmp_path / "bad.zip", entries, m), tmp_path / "out")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


def test_symlink_duplicates_and_collisions(base, tmp_path):
    link = zipfile.ZipInfo("stages/0-featurizer.npub/x")
    link.external_attr = 0o120777 << 16
    cases = [([(link, b"/etc/passwd")], "is a symbolic link"),
             ([(PROGRAM, b"other")], f"{PROGRAM} appears twice"),
             ([(PROGRAM + "/x", b"x")], "collide when extracted"),
             ([(PROGRAM.upper(), b"x")], "collide when extracted"),
             ([(PROGRAM + "/", b"")], "collide when extracted")]
    for extra, fragment in cases:
        refused(write_pkg(tmp_path / "bad.zip", [*base["entries"], *extra],
                          base["manifest"]), fragment)


@pytest.mark.parametrize("fields, fragment", [
    ({"flags": 1}, "is encrypted"), ({"method": 99}, "compression method 99"),
    ({"method": 14}, "compression method 14"),
    ({"usize": 4 * 2**30 - 2}, "declares 4.0 GiB uncompressed, over the 1.0 GiB")])
def test_headers_refused_up_front(base, tmp_path, fields, fragment):
    refused(patch(write_pkg(tmp_path / "bad.zip", base["entries"], base["manifest"]),
                  PROGRAM, **fields), fragment)


def test_corrupt_zips(base, tmp_path):
    good = write_pkg(tmp_path / "good.zip", base["entries"], base["manifest"]).read_bytes()
    (tmp_path / "cut.zip").write_bytes(good[:-30])
    refused(tmp_path / "cut.zip", "not a zip file")
    with zipfile.ZipFile(tmp_path / "good.zip") as z:  # garbage deflate data: zlib.error
        at = z.getinfo("manifest.json").header_offset + 30 + len("manifest.json")
    (tmp_path / "zlib.zip").write_bytes(good[:at] + b"\xff" * 8 + good[at + 8:])
    refused(tmp_path / "zlib.zip", "manifest.json cannot be unpacked .*Error -3")
    size = len(good) + 1000  # sizes past the end of the file: EOFError
    refused(patch(tmp_path / "good.zip", PROGRAM, csize=size, usize=size), "cannot be unpacked")
    refused(tmp_path / "nothing.zip", "package not found")


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """The sizes of the chunks zipfile decompresses (ZipExtFile.read): what a bomb cost."""
    sizes, read = [], zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read",
                        lambda f, n=-1: (data := read(f, n), sizes.append(len(data)))[0])
    return sizes


def bomb_pkg(path, base, size: int):
    """The package with ``size`` zeros, deflated, in place of its program."""
    info = zipfile.ZipInfo(PROGRAM)
    info.compress_type = zipfile.ZIP_DEFLATED
    assert write_pkg(path, [(info, bytes(size))], base["manifest"]).stat().st_size < size / 500
    return path


def test_deflate_bomb_is_refused_before_reading(base, tmp_path, reads):
    bad = bomb_pkg(tmp_path / "bomb.zip", base, 8 * 2**20)
    refused(bad, "declares 8.0 MiB uncompressed, over the 1.0 MiB cap per file",
            limits=PackageLimits(file_bytes=2**20))
    refused(bad, "over the 4.0 MiB cap of a package", limits=PackageLimits(total_bytes=4 * 2**20))
    assert reads == []


def test_bomb_with_a_lying_size_stops_at_the_declared_size(base, tmp_path, reads):
    bad = patch(bomb_pkg(tmp_path / "liar.zip", base, 32 * 2**20), PROGRAM, usize=1000)
    refused(bad, f"file {PROGRAM} cannot be unpacked", limits=PackageLimits(file_bytes=2**20))
    assert sum(reads) < 1000 + 4096  # the declared 1000 bytes and the manifest, of 32 MiB


# --- the manifest is hostile JSON --------------------------------------------------------

def _stage(**kw):
    return lambda m: m["stages"][0].update(kw)


MANIFESTS = {
    "Infinity": (lambda m: m.update(version=float("inf")), "non-standard constant Infinity"),
    "NaN": (lambda m: m.update(version=float("nan")), "non-standard constant NaN"),
    "1e999": (b'{"format": "npusim-package", "version": 1e999}', "1e999 is out of range"),
    "huge int": (b'{"version": ' + b"9" * 5000 + b"}", "not valid JSON: Exceeds the limit"),
    "deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "not UTF-8": (b'{"name": "\xff"}', "not valid JSON: 'utf-8' codec"),
    "duplicate key": (b'{"format": 1, "format": 2}', "duplicate key 'format'"),
    "version bool": (lambda m: m.update(format_version=True), "format version True"),
    "model version bool": (lambda m: m.update(version=True), "'version' must be an integer"),
    "model version 0": (lambda m: m.update(version=0), "'version' must be an integer in 1"),
    "name newline": (lambda m: m.update(name="a\nb"), "'name' must be a printable string"),
    "unknown key": (lambda m: m.update(extra=1), "unknown key 'extra'"),
    "files list": (lambda m: m.update(files=[]), "'files' must map"),
    "checksum": (lambda m: m["files"].update({PROGRAM: "XYZ"}), "must be a SHA-256"),
    "no stages": (lambda m: m.update(stages=[]), "'stages' is empty"),
    "stage kind": (_stage(kind="python"), "kind must be 'tensorflow' or 'accelerator'"),
    "stage string": (lambda m: m.update(stages=["x"]), "stage #0 must be an object"),
    "stage target": (_stage(target=7), "target must be a device fingerprint"),
    "dim bool": (_stage(inputs=[{"name": "x", "dtype": "f", "shape": [True]}]), "dimension"),
    "dim < 0": (_stage(inputs=[{"name": "x", "dtype": "f", "shape": [-1]}]), "dimension"),
    "rank 33": (_stage(outputs=[{"name": "x", "dtype": "f", "shape": [1] * 33}]), "at most 32"),
    "tf without version": (lambda m: m["stages"][0].update(kind="tensorflow", target=None)
                           or m["stages"][0].pop("target"), "'tensorflow' must give the version"),
    "orphan file": (lambda m: m["files"].update({"stages/x": "0" * 64}), "belongs to no stage"),
    "stage path": (_stage(path="stages/../x.npub"), r"unsafe file path 'stages/\.\./x.npub'"),
    "file path": (lambda m: m.update(files={"../x": "0" * 64}), "unsafe file path '../x' in"),
}


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_hostile_manifest(base, tmp_path, case):
    edit, fragment = MANIFESTS[case]
    m = json.loads(json.dumps(base["manifest"]))
    if callable(edit):
        edit(m)
        m = json.dumps(m).encode()  # Python writes inf and nan as Infinity and NaN
    else:
        m = edit
    refused(write_pkg(tmp_path / "bad.zip", base["entries"], m, rehash=False), fragment)


def test_bad_program_names_the_package(base, tmp_path):
    bad = write_pkg(tmp_path / "bad.zip", [(PROGRAM, b"NPUB garbage")], base["manifest"])
    refused(bad, "stage 'featurizer': the program fails to load")


def test_failed_extraction_removes_what_it_wrote(base, tmp_path):
    entries = [*base["entries"], ("stages/0-featurizer.npub.extra", b"x")]
    m = dict(base["manifest"], files={PROGRAM: "0" * 64})
    bad = write_pkg(tmp_path / "bad.zip", base["entries"], m, rehash=False)
    (tmp_path / "out").mkdir()
    with pytest.raises(PackageError, match="does not match its checksum"):
        extract_package(bad, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(PackageError, match="not listed in the manifest"):
        extract_package(write_pkg(tmp_path / "x.zip", entries, base["manifest"], rehash=False),
                        tmp_path / "new")
    assert not (tmp_path / "new").exists()


# --- signatures ---------------------------------------------------------------------------

def test_signed_package_loads_under_its_key(base):
    alice, mallory = base["keys"]["alice"][1], base["keys"]["mallory"][1]
    model = load_package(base["signed"], trust_keys=[mallory, alice])
    assert model.name == "tiny" and model.stages[0].program.to_bytes() == base["files"][PROGRAM]
    load_package(base["signed"], trust_keys=alice.read_bytes())  # PEM bytes, alone
    load_package(base["signed"])  # no trusted keys: not verified, loads


def test_untrusted_packages_are_refused(base, tmp_path):
    alice, mallory = base["keys"]["alice"], base["keys"]["mallory"]
    refused(base["plain"], "not signed and trusted keys were given", trust_keys=[alice[1]])
    refused(base["signed"], "not among the 1 trusted key", trust_keys=[mallory[1]])
    with zipfile.ZipFile(base["signed"]) as z:
        sig = z.read("manifest.sig")
    forged = bytearray(base["files"][PROGRAM])
    forged[-1] ^= 1
    m = dict(base["manifest"], files={PROGRAM: sha(bytes(forged))})
    bad = write_pkg(tmp_path / "forged.zip", [(PROGRAM, bytes(forged))], m, rehash=False)
    with zipfile.ZipFile(bad, "a") as z:  # the old signature over a re-hashed manifest
        z.writestr("manifest.sig", sig)
    refused(bad, "signature by trusted key .* does not verify", trust_keys=[alice[1]])
    resigned = write_pkg(tmp_path / "resigned.zip", [(PROGRAM, bytes(forged))],
                         base["manifest"], sign=mallory[0])
    refused(resigned, "not among the 1 trusted key", trust_keys=[alice[1]])
    junk = write_pkg(tmp_path / "junk.zip", base["entries"], base["manifest"])
    with zipfile.ZipFile(junk, "a") as z:
        z.writestr("manifest.sig", b'{"algorithm": "rsa"}')
    refused(junk, "manifest.sig is malformed")  # well-formedness is checked even untrusted


def test_bad_keys(base, tmp_path):
    from serving_helpers import self_signed

    alice = base["keys"]["alice"]
    refused(base["signed"], "that is a private key", trust_keys=[alice[0]])
    refused(base["signed"], "trust key file not found", trust_keys=[tmp_path / "nope.pem"])
    with pytest.raises(PipelineError, match="not an Ed25519 private key"):  # an EC key
        save_package(base["model"], tmp_path / "x.zip", sign_key=self_signed(tmp_path)[1])
    with pytest.raises(PipelineError, match="already exists"):
        generate_keypair(alice[0].parent)


def test_cli_keygen_package_and_serve(base, tmp_path, monkeypatch, capsys):
    from npusim.runtime.serving import pipeline, tfstages
    from npusim.runtime.serving.server import ServerConfig, ServingConfigError

    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    private, public = tmp_path / "k" / "npusim-sign.pem", tmp_path / "k" / "npusim-sign.pub.pem"
    assert private.stat().st_mode & 0o777 == 0o600 and "trust" in capsys.readouterr().out
    monkeypatch.setattr(tfstages, "featurizer_pipeline", lambda *a: base["model"])
    out = tmp_path / "cli.zip"
    assert main(["package", "-o", str(out), "--sign-key", str(private)]) == 0
    assert "signed by key" in capsys.readouterr().out
    load_package(out, trust_keys=[public])
    assert main(["package", "-o", str(out), "--sign-key", str(public)]) == 2
    assert "is not a PEM private key" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "p.zip", "--trust-key", "a", "--trust-key", "b"])
    assert args.trust_key == ["a", "b"]
    with pytest.raises(ServingConfigError, match="trust key file not found"):
        ServerConfig(out, trust_keys=(str(tmp_path / "nope.pem"),)).validate()
    monkeypatch.setattr(pipeline, "import_tensorflow", lambda: None)  # refused before TF
    for pkg, key, fragment in ((base["plain"], public, "not signed"),
                               (out, base["keys"]["mallory"][1], "not among the 1 trusted"),
                               (out, tmp_path / "nope.pem", "trust key file not found")):
        assert main(["serve", str(pkg), "--port", "0", "--trust-key", str(key)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err


@pytest.mark.tf
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TensorFlow is not installed")
def test_signed_tensorflow_pipeline(pkg, tmp_path):
    import numpy as np

    private, public = generate_keypair(tmp_path / "k")
    signed = save_package(pkg.model, tmp_path / "signed.zip", sign_key=private)
    model = load_package(signed, trust_keys=[public])
    out = model.run({"images": np.array([pkg.images[0]], dtype=object)})["output_alias"]
    np.testing.assert_array_equal(out, pkg.expected[0])


@pytest.mark.tf
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TensorFlow is not installed")
def test_a_corrupt_savedmodel_past_its_checksum_is_a_pipeline_error(pkg, tmp_path):
    """TensorFlow fails in many ways (IndexError, KeyError, TypeError, its own errors) on
    a SavedModel whose bytes were changed and rehashed: each is one PipelineError."""
    with zipfile.ZipFile(pkg.path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(files.pop("manifest.json"))
    data = [n for n in files if n.endswith("variables.data-00000-of-00001")][0]
    graph = [n for n in files if n.endswith("saved_model.pb")][0]
    for name, cut in ((data, files[data][:-8]), (graph, files[graph][:len(files[graph]) // 2])):
        entries = [(n, cut if n == name else d) for n, d in files.items()]
        bad = write_pkg(tmp_path / f"bad{len(cut)}.zip", entries, manifest)
        with pytest.raises(PipelineError, match="cannot load the SavedModel") as err:
            load_package(bad)
        assert "\n" not in str(err.value)


# --- fuzzing ------------------------------------------------------------------------------

NAMES = ["", "/abs", "../x", "stages/./x", "stages//x", "a\\b", "C:x", "stages/\n",
         "manifest.json", "manifest.sig", PROGRAM, PROGRAM + "/x", PROGRAM.upper(),
         PROGRAM + "/", "stages/0-featurizer.npub.bak"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                        max_size=4),
                    max_leaves=8)


def _slots(node, out):
    """Every (container, key) of a JSON value, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for k, v in list(items):
        out.append((node, k))
        _slots(v, out)
    return out


@st.composite
def mutants(draw, base):
    """A package with 0-3 of its entries or manifest values changed, its checksums
    recomputed (or not) and signed again (or not), then 0-2 byte ranges spliced."""
    m = json.loads(json.dumps(base["manifest"]))
    entries = [[n, d, zipfile.ZIP_STORED, 0o100644] for n, d in base["entries"]]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["json", "drop", "rename", "data", "add", "attr"]))
        e = entries[draw(st.integers(0, len(entries) - 1))] if entries else None
        if op == "json":
            slots = _slots(m, [])
            node, k = slots[draw(st.integers(0, len(slots) - 1))]
            node[k] = draw(JSON)
        elif op == "add" or not e:
            entries.append([draw(st.sampled_from(NAMES)), draw(st.binary(max_size=32)),
                            zipfile.ZIP_DEFLATED, 0o100644])
        elif op == "drop":
            entries.remove(e)
        elif op == "rename":
            e[0] = draw(st.sampled_from(NAMES) | st.text(max_size=12))
        elif op == "data":
            e[1] = draw(st.binary(max_size=64)) + e[1][draw(st.integers(0, len(e[1]))):]
        else:  # compression method and file type
            e[2:] = draw(st.sampled_from([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                          zipfile.ZIP_LZMA])), \
                draw(st.sampled_from([0o120777, 0o040755, 0o020644, 0]))
    infos = []
    for name, data, method, mode in entries:
        info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
        info.compress_type, info.external_attr = method, mode << 16
        infos.append((info, data))
    sign = draw(st.booleans())
    buf = io.BytesIO()
    try:
        write_pkg(buf, infos, m, rehash=draw(st.booleans()),
                  sign=base["keys"]["alice"][0] if sign else None)
    except (ValueError, TypeError, IndexError):  # a name zipfile itself cannot write
        return base["signed"].read_bytes(), sign
    data = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 2))):  # flip, cut, insert or truncate a range
        at = draw(st.integers(0, len(data)))
        data[at:at + draw(st.integers(0, 64) | st.just(len(data)))] = draw(st.binary(max_size=8))
    return bytes(data), sign


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_package_mutants(base, tmp_path, scratch, data):
    blob, signed = data.draw(mutants(base))
    path = tmp_path / "mutant.zip"
    path.write_bytes(blob)
    limits = PackageLimits(total_bytes=2**20, file_bytes=2**19)
    with unittest.mock.patch.object(package, "import_tensorflow",
                                    side_effect=PackageError("no TensorFlow in this test")):
        try:
            model = load_package(path, trust_keys=[base["keys"]["alice"][1]] if signed else (),
                                 limits=limits)
            assert model.stages
        except PipelineError as exc:
            assert "\n" not in str(exc)
    assert list(scratch.iterdir()) == []
