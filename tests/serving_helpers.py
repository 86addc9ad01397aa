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
    from runtime.pipeline import ModelDefinition, import_tensorflow
    from runtime.tfstages import featurizer_pipeline

    tf = import_tensorflow()
    onnx.save(small_featurizer(channels=16), directory / "tiny.onnx")
    featurizer_pipeline(directory / "tiny.onnx", classes=CLASSES, name="tiny").save(
        directory / "tiny.zip")
    model = ModelDefinition.load(directory / "tiny.zip")
    images = encoded_images(tf)
    expected = [model.run({"images": np.array([im], dtype=object)})["output_alias"]
                for im in images]
    cert, key = self_signed(directory)
    return Package(directory / "tiny.zip", model, images, expected, cert, key)


def start_server(pkg: Package, tls: bool = True, **overrides):
    """A started PredictionServer on a free loopback port, the package already loaded."""
    from runtime.serving import PredictionServer, ServerConfig

    opts = dict(port=0, devices=2, metrics_port=0, max_request_bytes=2**20, max_batch=4)
    if tls:
        opts.update(tls_cert=pkg.cert, tls_key=pkg.key, api_keys=KEYS)
    opts.update(overrides)
    return PredictionServer(ServerConfig(pkg.path, **opts), model=pkg.model).start()


def client_for(server, pkg: Package, key: str | None = KEYS[0], **kw):
    from runtime.client import PredictionClient

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


def requests_total(metrics: dict, method: str, code: str) -> float:
    return metrics.get(("npusim_requests_total", (("code", code), ("method", method))), 0.0)
