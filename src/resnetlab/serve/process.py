"""``resnetlab serve`` in a child process on a free loopback port: how the tests and
``benchmarks/bench_serve.py`` talk to a real server."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceProcess:
    """Start with ``with ServiceProcess(checkpoint, "--max-batch", "8") as service: service.url``."""

    def __init__(self, checkpoint: str | os.PathLike, *options: str, startup_timeout_s: float = 180,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "resnetlab", "serve", "--checkpoint", str(checkpoint),
                        "--port", str(self.port), *options]
        self.startup_timeout_s = startup_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.log = Path(tempfile.mkstemp(prefix="resnetlab-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServiceProcess:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"`{' '.join(self.command)}` exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the service did not answer /health within {self.startup_timeout_s:g} s:\n{self.output()}")

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (uvicorn's graceful shutdown), SIGKILL if it has not exited after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")
