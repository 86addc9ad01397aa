# SPDX-License-Identifier: Apache-2.0
"""What the serving tests share: a small featurizer package, images, a TLS certificate.

The featurizer is a Conv (stride 4) + Relu + GlobalAveragePool on [1, 3, 224, 224],
so a request takes milliseconds and a load of hundreds of requests stays quick;
the pipeline around it is the real one (TF preprocessing, the compiled program on
the simulated device, TF dense + softmax head).
"""

from __future__ import annotations

import datetime
import ipaddress
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx_helpers import small_featurizer

KEYS = ("key-current-0123456789abcdef", "key-next-fedcba9876543210")
CLASSES = 10


@dataclass
class Package:
    path: Path
    model: object  # the ModelDefinition loaded from ``path``
    images: list[bytes]
    expected: list[np.ndarray]  # the direct run of each image, [1, CLASSES]
    cert: Path
    key: Path


def encoded_images(tf, count: int = 4, seed: int = 0) -> list[bytes]:
    """Seeded noise pictures of several sizes, JPEG and PNG alternately."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = 200 + 37 * i, 320 - 29 * i
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        enc = tf.io.encode_jpeg if i % 2 == 0 else tf.io.encode_png
        out.append(enc(pixels).numpy())
    return out


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 with its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def build_package(directory: Path) -> Package:
    from npusim.runtime.serving.package import load_package, save_package
    from npusim.runtime.serving.pipeline import import_tensorflow
    from npusim.runtime.serving.tfstages import featurizer_pipeline

    tf = import_tensorflow()
    onnx.save(small_featurizer(channels=16), directory / "tiny.onnx")
    save_package(featurizer_pipeline(directory / "tiny.onnx", classes=CLASSES, name="tiny"),
                 directory / "tiny.zip")
    model = load_package(directory / "tiny.zip")
    images = encoded_images(tf)
    expected = [model.run({"images": np.array([im], dtype=object)})["output_alias"]
                for im in images]
    cert, key = self_signed(directory)
    return Package(directory / "tiny.zip", model, images, expected, cert, key)


def make_server(pkg: Package, tls: bool = True, model=None, **overrides):
    """A PredictionServer (not started) on a free loopback port, ``model`` (default: the
    package's, already loaded) given."""
    from npusim.runtime.serving.server import PredictionServer, ServerConfig

    opts = dict(port=0, devices=2, metrics_port=0, max_request_bytes=2**20, max_batch=4)
    if tls:
        opts.update(tls_cert=pkg.cert, tls_key=pkg.key, api_keys=KEYS)
    opts.update(overrides)
    return PredictionServer(ServerConfig(pkg.path, **opts), model=model or pkg.model)


def start_server(pkg: Package, tls: bool = True, model=None, **overrides):
    """:func:`make_server`, started."""
    return make_server(pkg, tls, model, **overrides).start()


def client_for(server, pkg: Package, key: str | None = KEYS[0], **kw):
    from npusim.runtime.serving.client import PredictionClient

    tls = server.config.tls
    return PredictionClient("127.0.0.1", server.port, use_ssl=tls,
                            access_token=key if tls else None,
                            root_certificates=pkg.cert if tls else None, **kw)


def scrape(server) -> dict[tuple[str, tuple], float]:
    """The server's metrics as {(sample name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def requests_total(metrics: dict, method: str, code: str, entrypoint: str = "GRPC") -> float:
    """Calls of ``method`` that ended with ``code`` through ``entrypoint`` (GRPC or REST)."""
    labels = (("code", code), ("entrypoint", entrypoint), ("method", method))
    return metrics.get(("npusim_requests_total", labels), 0.0)


class HookedModel:
    """A loaded model whose ``run`` calls ``hook(feeds)`` first (to block, sleep or count)."""

    def __init__(self, model, hook: Callable[[dict], None]) -> None:
        self._model, self._hook = model, hook
        self.runs = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run(self, feeds, pool=None):
        with self._lock:
            self.runs += 1
        self._hook(feeds)
        return self._model.run(feeds, pool)


def health_status(server, pkg: Package, service: str = "") -> str:
    """The health service's answer for ``service`` as a name (SERVING, NOT_SERVING, ...)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{server.port}"
    channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(pkg.cert.read_bytes()))
               if server.config.tls else grpc.insecure_channel(target))
    with channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


# --- hand-made image files (no imaging library needed) ---
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (RGB, 8 bits) with a tiny IDAT: a
    decompression bomb's header at a few dozen bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(bytes(64))) + _chunk(b"IEND", b""))


def bmp(width: int, height: int, top_down: bool = False) -> bytes:
    """A 24-bit BMP of grey pixels (BITMAPINFOHEADER)."""
    row = (3 * width + 3) // 4 * 4
    pixels = bytes([128]) * (row * height)
    header = struct.pack("<IiiHHIIiiII", 40, width, -height if top_down else height, 1, 24,
                         0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + header + pixels


def gif(width: int, height: int, frames: int = 1,
        frame_size: tuple[int, int] | None = None) -> bytes:
    """A GIF of ``frames`` frames (each ``frame_size``, default the whole screen) in a
    4-colour palette, LZW-coded with a clear code before every pixel (so no code grows
    past 3 bits: simple, not small)."""
    fw, fh = frame_size or (width, height)
    out = [b"GIF89a", struct.pack("<HHBBB", width, height, 0x81, 0, 0),
           bytes([0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 255])]
    for f in range(frames):
        codes = []
        for i in range(fw * fh):
            codes += [4, (i + f) % 4]  # clear, then one literal
        codes.append(5)  # end of information
        bits = sum(c << (3 * k) for k, c in enumerate(codes))
        data = bits.to_bytes((3 * len(codes) + 7) // 8, "little")
        blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                          for i in range(0, len(data), 255))
        out += [b"\x2c", struct.pack("<HHHHB", 0, 0, fw, fh, 0), b"\x02", blocks, b"\x00"]
    out.append(b"\x3b")
    return b"".join(out)


def gif_claiming(frame_width: int, frame_height: int, frames: int = 1) -> bytes:
    """A 2 x 2 GIF whose frames' image descriptors declare ``frame_width`` x ``frame_height``
    (the raster data stays 2 x 2 pixels)."""
    data = bytearray(gif(2, 2, frames))
    at = 25  # header 6 + screen descriptor 7 + palette 12
    for _ in range(frames):
        assert data[at] == 0x2C
        struct.pack_into("<HH", data, at + 5, frame_width, frame_height)
        at += 11  # descriptor 10 + LZW minimum code size 1
        while data[at]:
            at += 1 + data[at]
        at += 1
    return bytes(data)
