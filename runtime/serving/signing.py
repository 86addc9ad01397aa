# SPDX-License-Identifier: Apache-2.0
"""Ed25519 signatures of model packages: keys, signing and checking the manifest.

A signed package holds ``manifest.sig`` beside ``manifest.json``::

    {"algorithm": "ed25519", "key": "<SHA-256 of the raw public key, hex>",
     "signature": "<64-byte Ed25519 signature, hex>"}

The signature is over ``b"npusim-package-manifest-v1\\0" + <the exact bytes of
manifest.json>`` (the prefix keeps a signing key from being usable for anything
else). The manifest holds the SHA-256 of every other file, so the signature covers
every byte of the package. ``key`` only names the signer in messages; a signature is
accepted when it verifies under one of the trusted keys.

Keys are PEM files (PKCS#8 private keys, SubjectPublicKeyInfo public keys, as written
by :func:`generate_keypair`, ``npusim keygen`` or ``openssl genpkey -algorithm ed25519``),
PEM bytes, or ``cryptography`` key objects.

Example:
    >>> private, public = generate_keypair("keys")                     # doctest: +SKIP
    >>> save_package(model, "m.zip", sign_key=private)                # doctest: +SKIP
    >>> load_package("m.zip", trust_keys=[public])                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from npusim.runtime.serving.pipeline import PipelineError

__all__ = ["PRIVATE_KEY_FILE", "PUBLIC_KEY_FILE", "SIGNATURE", "SigningError", "check_signature",
           "generate_keypair", "key_id", "load_private_key", "load_public_key", "load_trust_keys",
           "sign_manifest"]

SIGNATURE = "manifest.sig"
PRIVATE_KEY_FILE = "npusim-sign.pem"
PUBLIC_KEY_FILE = "npusim-sign.pub.pem"
MAX_SIGNATURE_BYTES = 1024
MAX_KEY_FILE_BYTES = 64 * 1024
_CONTEXT = b"npusim-package-manifest-v1\0"

PrivateKeyLike = str | Path | bytes | Ed25519PrivateKey
PublicKeyLike = str | Path | bytes | Ed25519PublicKey


class SigningError(PipelineError):
    """A key that cannot be used, or a signature that is malformed or not trusted."""


def key_id(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: how messages and ``manifest.sig`` name it."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _pem(key: str | Path | bytes, what: str) -> tuple[bytes, str]:
    if isinstance(key, str) and "-----BEGIN" in key:  # PEM text given for a path
        key = key.encode()
    if isinstance(key, bytes):
        return key, f"{what} (PEM bytes)"
    try:
        with open(key, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SigningError(f"{what} file not found: {key}") from None
    except OSError as exc:
        raise SigningError(f"{what} {key}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SigningError(f"{what} {key}: larger than a PEM key ({MAX_KEY_FILE_BYTES} bytes)")
    return data, f"{what} {key}"


def load_private_key(key: PrivateKeyLike) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file path, PEM bytes or a key object."""
    if isinstance(key, Ed25519PrivateKey):
        return key
    data, where = _pem(key, "signing key")
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise SigningError(f"{where} is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise SigningError(f"{where} is not a PEM private key") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningError(f"{where} is a {type(loaded).__name__.lstrip('_')}, "
                           "not an Ed25519 private key")
    return loaded


def load_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file path, PEM bytes or a key object."""
    if isinstance(key, Ed25519PublicKey):
        return key
    data, where = _pem(key, "trust key")
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        hint = " (that is a private key: trust its .pub.pem)" if b"PRIVATE KEY" in data else ""
        raise SigningError(f"{where} is not a PEM public key{hint}") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise SigningError(f"{where} is a {type(loaded).__name__.lstrip('_')}, "
                           "not an Ed25519 public key")
    return loaded


def load_trust_keys(keys: PublicKeyLike | Iterable[PublicKeyLike] | None) -> list[Ed25519PublicKey]:
    """Every key of ``keys`` loaded (one path or PEM alone counts as one key, not its letters)."""
    if keys is None:
        return []
    if isinstance(keys, (str, bytes, Path, Ed25519PublicKey)):
        keys = [keys]
    return [load_public_key(k) for k in keys]


def sign_manifest(key: Ed25519PrivateKey, manifest: bytes) -> bytes:
    """The ``manifest.sig`` content for the exact ``manifest`` bytes."""
    record = {"algorithm": "ed25519", "key": key_id(key.public_key()),
              "signature": key.sign(_CONTEXT + manifest).hex()}
    return (json.dumps(record, sort_keys=True) + "\n").encode()


def _parse(sig: bytes) -> tuple[str, bytes]:
    """(key id, signature) of a ``manifest.sig``; anything else is a SigningError."""
    bad = SigningError(f"{SIGNATURE} is malformed (expected ed25519, key and signature in hex)")
    try:
        record = json.loads(sig.decode("utf-8"))
    except (ValueError, RecursionError):
        raise bad from None
    if not isinstance(record, dict) or set(record) != {"algorithm", "key", "signature"}:
        raise bad
    kid, value = record["key"], record["signature"]
    if record["algorithm"] != "ed25519" or not all(
            isinstance(v, str) and len(v) == n and set(v) <= set("0123456789abcdef")
            for v, n in ((kid, 64), (value, 128))):
        raise bad
    return kid, bytes.fromhex(value)


def check_signature(manifest: bytes, sig: bytes | None, trusted: list[Ed25519PublicKey]) -> None:
    """Raise SigningError unless ``sig`` signs ``manifest`` under one of ``trusted``.

    With no trusted keys a signature is only checked to be well formed (a package
    loads signed or not); with trusted keys an unsigned package is refused.
    """
    if sig is None:
        if trusted:
            raise SigningError("the package is not signed and trusted keys were given")
        return
    kid, value = _parse(sig)
    if not trusted:
        return
    for key in trusted:
        try:
            key.verify(value, _CONTEXT + manifest)
            return
        except InvalidSignature:
            continue
    if kid in {key_id(k) for k in trusted}:
        raise SigningError(f"the signature by trusted key {kid[:16]} does not verify: "
                           "the manifest was altered after signing")
    raise SigningError(f"signed by key {kid[:16]}, which is not among the "
                       f"{len(trusted)} trusted key(s)")


def generate_keypair(directory: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair into ``directory``: (private key, public key) paths.

    The private key file (``npusim-sign.pem``) is created with mode 0600 and is never
    overwritten; the public key (``npusim-sign.pub.pem``) is what servers trust.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for p in (private, public):
        if p.exists():
            raise SigningError(f"{p} already exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
