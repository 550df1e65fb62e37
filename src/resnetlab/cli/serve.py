"""``resnetlab serve``: a model file behind an HTTP endpoint."""
from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from ..errors import ConfigError


def add_parsers(commands) -> None:
    from ..serve.settings import ServeSettings

    defaults = ServeSettings(checkpoint="")
    serve = commands.add_parser(
        "serve", help="an HTTP service: /predict, /embed, /metrics and a web page, with dynamic batching",
        description="Serve a trained (.safetensors) or exported/INT8 (.onnx, .pt2, .pt) model over HTTP. Concurrent "
                    "requests are grouped into batches of up to --max-batch images, waiting at most "
                    "--max-wait-ms for a batch to fill. Open http://HOST:PORT/ for a page to try it, "
                    "/docs for the API.")
    serve.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors, .onnx, .pt2 or .pt model file, or a pretrained tag")
    serve.add_argument("--host", default=defaults.host, help=f"address to listen on (default {defaults.host})")
    serve.add_argument("--port", type=int, default=defaults.port, help=f"default {defaults.port}")
    serve.add_argument("--workers", type=int, default=defaults.workers,
                       help="processes, each with its own model and its share of the cores (default 1)")
    serve.add_argument("--threads", type=int, help="threads per worker (default: cores / workers)")
    serve.add_argument("--backend", default=defaults.backend,
                       help="for .safetensors: auto, eager, compile, onnxruntime or openvino (default auto: "
                            "the fastest installed); .onnx, .pt2 and .pt files run on the runtime they were written for")
    serve.add_argument("--max-batch", type=int, default=defaults.max_batch,
                       help=f"images per forward pass; 1 turns batching off (default {defaults.max_batch})")
    serve.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                       help=f"how long a batch waits to fill (default {defaults.max_wait_ms:g})")
    serve.add_argument("--max-queue", type=int, default=defaults.max_queue,
                       help="images that may wait for a batch; past it a request gets 503 and a Retry-After "
                            f"at once (default {defaults.max_queue})")
    serve.add_argument("--top-k", type=int, default=defaults.top_k,
                       help=f"labels per image unless a request asks (default {defaults.top_k})")
    serve.add_argument("--max-body-mb", type=float, default=defaults.max_body_mb,
                       help=f"largest request body, MiB (default {defaults.max_body_mb:g})")
    serve.add_argument("--max-images", type=int, default=defaults.max_images,
                       help=f"images per request (default {defaults.max_images})")
    serve.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                       help=f"largest image, width x height, checked before decoding (default {defaults.max_pixels:,})")
    serve.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s,
                       help=f"seconds a client may stall mid-upload before a 408 (default {defaults.request_timeout_s:g})")
    serve.add_argument("--graceful-timeout", type=float, default=defaults.graceful_timeout_s,
                       help="seconds in-flight requests get to finish on shutdown "
                            f"(default {defaults.graceful_timeout_s:g})")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(run=cmd_serve)


def _check_address_is_free(host: str, port: int) -> None:
    # Bound the way uvicorn binds: IPv6 for an address with a colon, else IPv4, reusable (only a listener blocks).
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:  # socket.gaierror for an unknown host name is one too
            raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}; choose another --host or "
                              "--port, or stop what listens there") from error


def cmd_serve(args: argparse.Namespace, console) -> None:
    import torch
    import uvicorn

    from ..deploy.optimize import resolve_backend
    from ..serve.model import ServedModel
    from ..serve.settings import ENVIRONMENT_VARIABLE, ServeSettings

    settings = ServeSettings(
        checkpoint=str(args.checkpoint), host=args.host, port=args.port, workers=args.workers, threads=args.threads,
        backend=args.backend, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, top_k=args.top_k,
        max_body_mb=args.max_body_mb, max_images=args.max_images, max_pixels=args.max_pixels,
        request_timeout_s=args.request_timeout, graceful_timeout_s=args.graceful_timeout)
    server_options = {"host": settings.host, "port": settings.port, "log_level": "info",
                      "access_log": args.access_log, "timeout_graceful_shutdown": settings.graceful_timeout_s}
    resolve_backend(settings.backend, torch.device("cpu"))  # a wrong backend fails before anything loads
    _check_address_is_free(settings.host, settings.port)  # and so does a port in use
    if settings.workers == 1:
        from ..serve.app import create_app

        uvicorn.run(create_app(settings), **server_options)
        return
    # Each worker builds its own service; a bad model file fails here first, in one line.
    ServedModel(settings.checkpoint, "eager")
    os.environ[ENVIRONMENT_VARIABLE] = settings.to_environment()
    uvicorn.run("resnetlab.serve.app:app_from_environment", factory=True, workers=settings.workers, **server_options)
