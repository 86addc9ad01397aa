# SPDX-License-Identifier: Apache-2.0
"""``npusim package``, ``keygen``, ``serve`` and ``predict``: the Brainwave service flow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from npusim.runtime.cli.common import (
    UsageError,
    device_opts,
)


def add_commands(sub: argparse._SubParsersAction, formats: tuple[str, ...]) -> None:
    """Add this group's subcommands to the ``npusim`` parser."""
    pk = sub.add_parser("package", help="build the featurizer pipeline (preprocessing, "
                        "device program, classifier) and save it as one package")
    pk.add_argument("-o", "--output", required=True, metavar="OUT.zip")
    pk.add_argument("--model", default="resnet50", help="zoo name or ONNX file (default resnet50)")
    device_opts(pk, formats)
    pk.add_argument("--classes", type=int, default=1000, help="classifier classes (default 1000)")
    pk.add_argument("--seed", type=int, default=0, help="seed of the model and head weights")
    pk.add_argument("--name", help="model name (default: the model's)")
    pk.add_argument("--sign-key", metavar="KEY.pem",
                    help="sign the package with this Ed25519 private key (npusim keygen)")
    pk.set_defaults(fn=cmd_package)

    kg = sub.add_parser("keygen", help="create an Ed25519 key pair to sign packages with")
    kg.add_argument("--out", default=".", metavar="DIR", help="where to write npusim-sign.pem "
                    "(private, mode 0600) and npusim-sign.pub.pem (default: here)")
    kg.set_defaults(fn=cmd_keygen)

    sv = sub.add_parser("serve", help="serve a pipeline package over the TF Serving gRPC "
                        "(and REST) API")
    sv.add_argument("package", help="pipeline package (.zip)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    sv.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0: any)")
    sv.add_argument("--rest-port", type=int, metavar="P",
                    help="also serve TF Serving's REST API on this port (TF Serving's is 8501; "
                    "default: off; 0: any), with the same TLS, keys and limits")
    sv.add_argument("--devices", type=int, default=1, help="simulated devices (default 1)")
    sv.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain (enables TLS)")
    sv.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    sv.add_argument("--api-key", action="append", metavar="KEY",
                    help="accepted Bearer key (needs TLS; at most two, for rotation)")
    sv.add_argument("--api-key-file", metavar="FILE",
                    help="keys one per line (keeps them out of the process list)")
    sv.add_argument("--metrics-port", type=int, metavar="P",
                    help="serve Prometheus metrics over HTTP on this port (default: off)")
    sv.add_argument("--max-batch", type=int, default=16, help="largest batch (default 16)")
    sv.add_argument("--max-request-mb", type=float, default=16.0,
                    help="largest request in MiB (default 16)")
    sv.add_argument("--max-image-pixels", type=int, default=40_000_000, metavar="N",
                    help="largest image, in pixels as its header declares them, checked before "
                    "it is decoded (default 40000000)")
    sv.add_argument("--max-queued", type=int, default=64, metavar="N",
                    help="Predict calls held at once, running or waiting; more are refused "
                    "with RESOURCE_EXHAUSTED (default 64)")
    sv.add_argument("--workers", type=int, default=8,
                    help="Predict calls running the pipeline at once (default 8)")
    sv.add_argument("--grace", type=float, default=10.0,
                    help="seconds in-flight requests get on SIGINT/SIGTERM (default 10)")
    sv.add_argument("--trust-key", action="append", metavar="PUB.pem",
                    help="serve the package only if signed by this Ed25519 public key "
                    "(repeatable: any of them)")
    sv.set_defaults(fn=cmd_serve)

    pr = sub.add_parser("predict", help="score images on a running `npusim serve`")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    pr.add_argument("--address", required=True, metavar="HOST:PORT")
    pr.add_argument("--labels", metavar="FILE", help="class names, one per line")
    pr.add_argument("--top", type=int, default=5, help="classes shown per image (default 5)")
    pr.add_argument("--tls", action="store_true", help="connect with TLS")
    pr.add_argument("--root-cert", metavar="FILE", help="PEM CA certificate (implies --tls)")
    pr.add_argument("--api-key", metavar="KEY", help="Bearer key (default $NPUSIM_API_KEY)")
    pr.add_argument("--model", help="model name (default: the server's model)")
    pr.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt")
    pr.add_argument("--retries", type=int, default=5, help="retries when unavailable")
    pr.set_defaults(fn=cmd_predict)



def cmd_package(args: argparse.Namespace) -> int:
    from npusim.runtime.serving.package import save_package
    from npusim.runtime.serving.signing import key_id, load_private_key
    from npusim.runtime.serving.tfstages import featurizer_pipeline
    from npusim.simulator.progress import task

    key = load_private_key(args.sign_key) if args.sign_key else None  # before the slow build
    out = Path(args.output)
    with task("package", total=2, unit="step") as progress:
        progress.note("build the stages")
        model = featurizer_pipeline(args.model, args.device or "brainwave-s10", args.numerics,
                                    args.seed, args.classes, args.name)
        progress.update()
        progress.note("save them")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_package(model, out, sign_key=key)
        progress.update()
    stages = " -> ".join(f"{s.name} ({s.kind})" for s in model.stages)
    cfg = model.device_config()
    size = out.stat().st_size
    size_text = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"
    print(f"packaged {model.name} v{model.version} for {cfg.name} ({cfg.numerics}): {stages}; "
          f"{size_text} -> {out}"
          + (f" (signed by key {key_id(key.public_key())[:16]})" if key else ""))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from npusim.runtime.serving.signing import generate_keypair, key_id, load_public_key

    private, public = generate_keypair(args.out)
    print(f"key {key_id(load_public_key(public))[:16]}: sign with {private} (keep it secret), "
          f"trust {public}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    from npusim.runtime.serving.config import ServerConfig, read_api_key_file
    from npusim.runtime.serving.pipeline import import_tensorflow
    from npusim.runtime.serving.server import serve

    keys = tuple(args.api_key or ()) + (read_api_key_file(args.api_key_file)
                                        if args.api_key_file else ())
    config = ServerConfig(args.package, host=args.host, port=args.port, devices=args.devices,
                          tls_cert=args.tls_cert, tls_key=args.tls_key, api_keys=keys,
                          max_request_bytes=int(args.max_request_mb * 2**20),
                          max_batch=args.max_batch, metrics_port=args.metrics_port,
                          rest_port=args.rest_port,
                          max_image_pixels=args.max_image_pixels, max_queued=args.max_queued,
                          workers=args.workers, grace=args.grace,
                          trust_keys=tuple(args.trust_key or ()))
    config.validate()  # before the slow TensorFlow import
    logging.basicConfig(level=logging.INFO, format="npusim serve: %(levelname)s %(message)s")
    logging.getLogger("npusim.serving").info("importing TensorFlow")
    import_tensorflow()

    def ready(server) -> None:
        metrics = (f", metrics on {args.host}:{server.metrics_port}"
                   if server.metrics_port is not None else "")
        if server.rest_port is not None:
            metrics = f", REST on {args.host}:{server.rest_port}" + metrics
        print(f"serving {server.model.name} version {server.model.version} on "
              f"{server.address} (TLS {'on' if config.tls else 'off'}, {len(keys)} API key(s), "
              f"{config.devices} device(s){metrics})", flush=True)

    serve(config, on_ready=ready)
    # stopped and logged: end now; the interpreter's teardown of TensorFlow (and of request
    # threads a cancelled call left running) would take seconds more
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cmd_predict(args: argparse.Namespace) -> int:
    import os

    from npusim.runtime.serving.client import PredictionClient, format_top, parse_address

    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    key = args.api_key or os.environ.get("NPUSIM_API_KEY") or None
    tls = args.tls or args.root_cert is not None
    if key and not tls:
        raise UsageError("an API key needs --tls: a key sent in plaintext is given away")
    labels = Path(args.labels).read_text().splitlines() if args.labels else None
    images = [(path, Path(path).read_bytes()) for path in args.images]
    with PredictionClient(host, port, use_ssl=tls, access_token=key,
                          root_certificates=args.root_cert, model_name=args.model,
                          timeout=args.timeout, retries=args.retries) as client:
        for path, data in images:
            print(path)
            print("\n".join(format_top(client.score_image(data), labels, args.top)))
    return 0

