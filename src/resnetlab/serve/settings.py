"""Everything ``resnetlab serve`` is told, as one object: from the command line to the app and its workers."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from ..errors import ConfigError

# uvicorn starts each worker process by importing the app; the settings travel to it in this variable.
ENVIRONMENT_VARIABLE = "RESNETLAB_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServeSettings:
    checkpoint: str  # a .safetensors (resnetlab train), .onnx, .pt2 or .pt (resnetlab export / quantize) model file
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # processes, each with its own copy of the model
    threads: int | None = None  # intra-op threads per worker; default: the CPU cores shared among workers
    backend: str = "auto"  # how `optimize` runs a .safetensors model; .onnx, .pt2 and .pt files run as they were written
    max_batch: int = 32  # images one forward pass may group from concurrent requests
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_queue: int = 256  # images waiting for a batch; a request that would go past it gets 503 at once
    top_k: int = 5  # labels returned per image unless the request asks for another number
    max_body_mb: float = 20.0  # request bodies above this are refused with 413
    max_images: int = 64  # images one request may carry
    max_pixels: int = 40_000_000  # width x height above this is refused unread (decompression bombs)
    request_timeout_s: float = 30.0  # a client that sends no body bytes for this long gets 408
    graceful_timeout_s: float = 30.0  # on shutdown, in-flight requests get this long to finish

    def __post_init__(self) -> None:
        positive = {"max_batch": self.max_batch, "max_queue": self.max_queue, "max_images": self.max_images,
                    "top_k": self.top_k, "workers": self.workers, "max_pixels": self.max_pixels,
                    "max_body_mb": self.max_body_mb, "request_timeout_s": self.request_timeout_s}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive, not {value}")
        if self.max_queue < self.max_images:
            raise ConfigError(f"max-queue ({self.max_queue}) must hold at least one whole request of "
                              f"max-images ({self.max_images}): raise --max-queue or lower --max-images")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max-wait-ms must be 0 or more, not {self.max_wait_ms}")
        if self.graceful_timeout_s < 0:
            raise ConfigError(f"graceful-timeout-s must be 0 or more, not {self.graceful_timeout_s}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, not {self.threads}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, not {self.port}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def threads_per_worker(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def to_environment(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> ServeSettings:
        text = os.environ.get(ENVIRONMENT_VARIABLE)
        if text is None:
            raise ConfigError(f"{ENVIRONMENT_VARIABLE} is not set; start the service with `resnetlab serve`")
        return cls(**json.loads(text))
