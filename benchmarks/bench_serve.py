"""`resnetlab serve` under load, on loopback: throughput and p50/p99 latency at several
concurrencies, with dynamic batching on (--max-batch 32) and off (--max-batch 1) in one run.

Each level sends a bounded number of requests (or stops at a time limit), one real JPEG each,
from one client thread per connection (http.client, keep-alive). The client shares the
machine's cores with the server. An asyncio httpx client was tried first: on 2 cores it was
itself the bottleneck, and an unfair one (p99 of 600 ms while the server answered in 6 ms).

    .venv/bin/python benchmarks/bench_serve.py [--models cifar_resnet20,resnet18] [--concurrency 1,8,32]
"""
from __future__ import annotations

import argparse
import http.client
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from resnetlab import create_model, save_weights
from resnetlab.demo import extract_demo_data
from resnetlab.serve.process import ServiceProcess

MODES = {"batching off": ("--max-batch", "1"), "batching on": ("--max-batch", "32", "--max-wait-ms", "5")}


def load(port: int, image: bytes, concurrency: int, requests: int, max_seconds: float) -> dict:
    latencies, failures, remaining = [], [], [requests]
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if remaining[0] <= 0 or time.perf_counter() > deadline:
                    break
                remaining[0] -= 1
            started = time.perf_counter()
            connection.request("POST", "/predict", body=image, headers={"content-type": "image/jpeg"})
            answer = connection.getresponse()
            answer.read()
            (latencies if answer.status == 200 else failures).append(time.perf_counter() - started)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"throughput": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "requests": len(latencies), "failures": len(failures)}


def images_and_batches(port: int) -> tuple[float, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.request("GET", "/metrics")
    families = text_string_to_metric_families(connection.getresponse().read().decode())
    values = {sample.name: sample.value for family in families for sample in family.samples if not sample.labels}
    return values["resnetlab_images_total"], values["resnetlab_batch_size_count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cifar_resnet20,resnet18")
    parser.add_argument("--checkpoint", type=Path, help="serve this model file instead of random weights")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=400, help="per level (default 400)")
    parser.add_argument("--max-seconds", type=float, default=30, help="per level (default 30)")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    print(f"{os.cpu_count()} cores shared by server and client; one JPEG per request; "
          f"up to {args.requests} requests or {args.max_seconds:g} s per level; weights random unless --checkpoint")
    with tempfile.TemporaryDirectory() as work:
        image = next((extract_demo_data(Path(work)) / "test").rglob("*.jpg")).read_bytes()
        checkpoints = [args.checkpoint] if args.checkpoint else [
            save_weights(create_model(name).eval(), Path(work) / f"{name}.safetensors")
            for name in args.models.split(",")]
        for checkpoint in checkpoints:
            results = {}
            for mode, options in MODES.items():
                with ServiceProcess(checkpoint, "--backend", args.backend, *options) as service:
                    load(service.port, image, 4, 32, 30)  # warm-up: every backend's first calls are slow
                    for level in levels:
                        images_before, batches_before = images_and_batches(service.port)
                        results[mode, level] = load(service.port, image, level, args.requests, args.max_seconds)
                        images, batches = images_and_batches(service.port)
                        results[mode, level]["per_batch"] = (images - images_before) / max(1.0, batches - batches_before)
            print(f"\n{Path(checkpoint).stem} (backend {args.backend})")
            print(f"{'concurrency':>11s} {'mode':>13s} {'img/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
                  f"{'img/batch':>9s} {'requests':>9s}")
            for level in levels:
                for mode in MODES:
                    row = results[mode, level]
                    print(f"{level:>11d} {mode:>13s} {row['throughput']:8.1f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f} "
                          f"{row['per_batch']:9.1f} {row['requests']:>9d}"
                          + (f"  ({row['failures']} failed)" if row["failures"] else ""))
                gain = results["batching on", level]["throughput"] / results["batching off", level]["throughput"]
                print(f"{level:>11d} {'on / off':>13s} {gain:7.2f}x")


if __name__ == "__main__":
    main()
