"""`resnetlab serve`, started for real on a loopback port and called over HTTP."""
from __future__ import annotations

import asyncio
import http.client
import io
import json
import signal
import socket
import struct
import time
import zlib
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from resnetlab import create_model, load_model, save_weights
from resnetlab.cli import main
from resnetlab.deploy.export import ExportSettings, export_model
from resnetlab.image_input import normalize, read_crop
from resnetlab.retrieval import embed
from resnetlab.serve.process import ServiceProcess

pytestmark = pytest.mark.xdist_group("serve")  # the module's service starts on one worker only

# A small service so the limits are quick to reach: 1 MiB bodies, 8 images, 1 megapixel, 3 s stalls.
LIMITS = ("--max-body-mb", "1", "--max-images", "8", "--max-pixels", "1000000", "--request-timeout", "3")
# The service runs the optimized model (OpenVINO here); `resnetlab predict` runs eager PyTorch.
PROBABILITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def service(cifar_classifier):
    with ServiceProcess(cifar_classifier, "--threads", "1", *LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def images(cifar10_root, hymenoptera_root) -> list[Path]:
    """Real CIFAR-10 test images of five classes, and two large photos the service must resize."""
    cifar = [sorted((cifar10_root / "test" / name).glob("*.jpg"))[3] for name in
             ("airplane", "cat", "frog", "ship", "truck")]
    photos = [sorted((hymenoptera_root / "val" / name).glob("*.jpg"))[0] for name in ("ants", "bees")]
    return cifar + photos


def form(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]


def metric(service, name: str, **labels) -> float:
    """A sample of ``GET /metrics`` (0 when it has not been recorded yet)."""
    text = httpx.get(f"{service.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def cli_predictions(checkpoint, paths, capsys, top_k=3) -> list[dict]:
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, paths), "--json", "-k", str(top_k)]) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_predictions(served: list[dict], expected: list[dict]) -> None:
    assert len(served) == len(expected)
    for ours, theirs in zip(served, expected):
        assert ours["file"] == Path(theirs["path"]).name
        assert [t["label"] for t in ours["top"]] == [t["label"] for t in theirs["top"]]
        for a, b in zip(ours["top"], theirs["top"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=PROBABILITY_TOLERANCE)


def test_predictions_equal_the_predict_command(service, cifar_classifier, images, capsys):
    answer = httpx.post(f"{service.url}/predict", params={"top_k": 3}, files=form(images), timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "cifar_resnet20"
    assert_same_predictions(body["predictions"], cli_predictions(cifar_classifier, images, capsys))
    assert 0 < body["latency"]["decode_ms"] + body["latency"]["inference_ms"] <= body["latency"]["total_ms"] + 1e-6


def test_a_raw_body_gets_the_same_answer_as_a_form(service, images):
    image = images[1]
    raw = httpx.post(f"{service.url}/predict", content=image.read_bytes(), headers={"content-type": "image/jpeg"})
    multipart = httpx.post(f"{service.url}/predict", files=form([image]))
    assert raw.status_code == multipart.status_code == 200
    assert raw.json()["predictions"][0]["file"] == "body"
    assert raw.json()["predictions"][0]["top"] == multipart.json()["predictions"][0]["top"]
    assert len(raw.json()["predictions"][0]["top"]) == 5  # the service's --top-k default


def test_embed_equals_the_embedding_resnetlab_embed_computes(service, cifar_classifier, images):
    answer = httpx.post(f"{service.url}/embed", files=form(images[:3]))
    assert answer.status_code == 200, answer.text
    served = torch.tensor([item["embedding"] for item in answer.json()["embeddings"]])
    model = load_model(cifar_classifier).eval()
    crops = torch.stack([read_crop(path, model.preprocessing) for path in images[:3]])
    expected = embed(model, normalize(crops, model.preprocessing))
    assert answer.json()["dimension"] == served.shape[1] == model.num_features
    assert torch.allclose(served, expected, atol=1e-4)
    assert torch.allclose(served.norm(dim=1), torch.ones(3), atol=1e-5)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose header says width x height: a decompression bomb's shape, without the bomb."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def _truncated_jpeg(images) -> bytes:
    return images[-1].read_bytes()[:2000]


BAD_REQUESTS = {
    # name: (how to send it, expected status, words the error must contain)
    "text file": (lambda im: {"files": [("file", ("notes.jpg", b"just some text", "image/jpeg"))]}, 415, "not a readable image"),
    "truncated jpeg": (lambda im: {"files": [("file", ("cut.jpg", _truncated_jpeg(im), "image/jpeg"))]}, 400, "cut.jpg"),
    "empty body": (lambda im: {"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty"),
    "json body": (lambda im: {"json": {"image": "cat.jpg"}}, 415, "body, not application/json"),
    "no content type": (lambda im: {"content": b"\xff\xd8"}, 415, "body, with a Content-Type header saying which"),
    "wrong field": (lambda im: {"files": [("image", ("a.jpg", im[0].read_bytes(), "image/jpeg"))]}, 400, "'file'"),
    "body over the limit": (lambda im: {"content": b"\xff" * (1024 * 1024 + 1), "headers": {"content-type": "image/jpeg"}},
                            413, "at most 1,048,576"),
    "chunked body over the limit": (lambda im: {"content": iter([b"\xff" * 65536] * 17),
                                                "headers": {"content-type": "image/jpeg"}}, 413, "at most"),
    "decompression bomb": (lambda im: {"files": [("file", ("bomb.png", _png_claiming(5000, 5000), "image/png"))]},
                           413, "5000x5000 = 25,000,000 pixels"),
    "bomb over PIL's own limit": (lambda im: {"files": [("file", ("big.png", _png_claiming(20000, 20000), "image/png"))]},
                                  413, "too large to decode"),
    "too many images": (lambda im: {"files": form([im[0]] * 9)}, 413, "at most 8 images a request (the service's "
                                                                        "--max-images)"),
    "malformed form": (lambda im: {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data; boundary=y"}},
                       400, ""),
    "top_k of 0": (lambda im: {"files": form([im[0]]), "params": {"top_k": 0}}, 422, "top_k"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_each_bad_request_gets_its_status_a_json_error_and_a_count(service, images, case):
    build, status, words = BAD_REQUESTS[case]
    errors_before = metric(service, "resnetlab_errors_total", endpoint="/predict", status=str(status))
    answer = httpx.post(f"{service.url}/predict", **build(images), timeout=30)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]
    assert metric(service, "resnetlab_errors_total", endpoint="/predict", status=str(status)) == errors_before + 1
    assert httpx.get(f"{service.url}/health").status_code == 200  # and the service is still there


def test_metrics_count_requests_images_and_batches(service, images):
    before = {name: metric(service, name, **labels) for name, labels in (
        ("resnetlab_requests_total", {"endpoint": "/predict", "status": "200"}),
        ("resnetlab_images_total", {}), ("resnetlab_batch_size_count", {}),
        ("resnetlab_request_latency_seconds_count", {"endpoint": "/predict"}))}
    for count in (1, 3):
        assert httpx.post(f"{service.url}/predict", files=form(images[:count])).status_code == 200
    assert metric(service, "resnetlab_requests_total", endpoint="/predict", status="200") == \
        before["resnetlab_requests_total"] + 2
    assert metric(service, "resnetlab_images_total") == before["resnetlab_images_total"] + 4
    assert metric(service, "resnetlab_batch_size_count") >= before["resnetlab_batch_size_count"] + 2
    assert metric(service, "resnetlab_request_latency_seconds_count", endpoint="/predict") == \
        before["resnetlab_request_latency_seconds_count"] + 2
    # Unknown paths are counted under one label, not one series each.
    httpx.get(f"{service.url}/no/such/{time.time()}")
    assert metric(service, "resnetlab_requests_total", endpoint="unmatched", status="404") >= 1


def test_metadata_and_schema_describe_the_model(service, cifar_classifier):
    metadata = httpx.get(f"{service.url}/metadata").json()
    model = load_model(cifar_classifier)
    assert metadata["arch"] == model.arch and metadata["class_names"] == model.class_names
    assert metadata["preprocessing"]["input_size"] == model.preprocessing.input_size
    assert metadata["limits"]["max_images"] == 8 and metadata["limits"]["max_queue"] == 256
    assert metadata["embedding_dim"] == model.num_features
    assert metadata["endpoints"] == ["/embed", "/health", "/metadata", "/metrics", "/predict"]
    schema = httpx.get(f"{service.url}/openapi.json").json()
    assert {"/predict", "/embed", "/health", "/metadata", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "application/octet-stream"} <= set(body)
    assert "<input id=\"file\" type=\"file\"" in httpx.get(f"{service.url}/").text


def _send_partial_upload(service, body: bytes, sent: int) -> socket.socket:
    """A raw connection that has sent the headers and the first ``sent`` bytes of ``body``."""
    connection = socket.create_connection(("127.0.0.1", service.port))
    connection.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:sent])
    return connection


def _read_response(connection: socket.socket, timeout_s: float) -> tuple[int, dict]:
    connection.settimeout(timeout_s)
    response = http.client.HTTPResponse(connection)
    response.begin()
    return response.status, json.loads(response.read())


def test_a_stalled_upload_blocks_no_one_and_gets_408(service, images):
    stalled = _send_partial_upload(service, images[0].read_bytes(), 100)
    try:
        started = time.monotonic()
        for _ in range(3):  # others are answered while it stalls
            assert httpx.post(f"{service.url}/predict", files=form([images[1]])).status_code == 200
        assert time.monotonic() - started < 2.5  # well inside the 3 s the stalled client is given
        status, body = _read_response(stalled, timeout_s=15)
        assert status == 408 and "stalled" in body["error"]
    finally:
        stalled.close()


def test_concurrent_requests_share_batches_and_get_their_own_answers(cifar_classifier, images):
    with ServiceProcess(cifar_classifier, "--threads", "1", "--backend", "eager",
                        "--max-batch", "16", "--max-wait-ms", "300") as batching:
        alone = [httpx.post(f"{batching.url}/predict", files=form([image])).json()["predictions"][0]
                 for image in images]
        batches_before = metric(batching, "resnetlab_batch_size_count")

        async def all_at_once():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*[client.post(f"{batching.url}/predict", files=form([image]))
                                              for image in images])

        answers = asyncio.run(all_at_once())
        batches = metric(batching, "resnetlab_batch_size_count") - batches_before
    assert [answer.status_code for answer in answers] == [200] * len(images)
    assert batches < len(images)  # some requests shared a forward pass
    for answer, expected in zip(answers, alone):
        served = answer.json()["predictions"][0]
        assert [t["label"] for t in served["top"]] == [t["label"] for t in expected["top"]]
        assert [t["probability"] for t in served["top"]] == pytest.approx([t["probability"] for t in expected["top"]],
                                                                          abs=1e-5)


def test_an_overloaded_service_answers_503_at_once_and_recovers(images, tmp_path):
    # A ResNet-50 on one thread takes a good fraction of a second per image, so the second of these
    # requests finds the queue holding the first's: it cannot wait, and is refused whole.
    checkpoint = save_weights(create_model("resnet50"), tmp_path / "resnet50.safetensors")
    with ServiceProcess(checkpoint, "--threads", "1", "--backend", "eager", "--max-batch", "1",
                        "--max-images", "2", "--max-queue", "2") as busy:
        async def all_at_once():
            async with httpx.AsyncClient(timeout=120) as client:
                return await asyncio.gather(*[client.post(f"{busy.url}/predict", files=form(images[:2]))
                                              for _ in range(6)])

        answers = asyncio.run(all_at_once())
        refused = [answer for answer in answers if answer.status_code == 503]
        assert 1 <= len(refused) < len(answers), [answer.status_code for answer in answers]
        assert metric(busy, "resnetlab_errors_total", endpoint="/predict", status="503") == len(refused)
        later = httpx.post(f"{busy.url}/predict", files=form(images[:2]), timeout=120)
    for answer in answers:
        assert answer.status_code in (200, 503), answer.text
    for answer in refused:
        assert "busy" in answer.json()["error"] and answer.headers["retry-after"] == "1"
        assert answer.headers["connection"] == "close"
    assert later.status_code == 200 and len(later.json()["predictions"]) == 2


def test_shutdown_finishes_the_request_in_flight(cifar_classifier, images):
    image = images[-1].read_bytes()
    with ServiceProcess(cifar_classifier, "--threads", "1", "--backend", "eager") as stopping:
        connection = _send_partial_upload(stopping, image, len(image) // 2)
        try:
            time.sleep(0.5)  # the request is being read
            stopping.process.send_signal(signal.SIGTERM)
            time.sleep(1.0)  # the server is shutting down, waiting for it
            assert stopping.process.poll() is None
            connection.sendall(image[len(image) // 2:])
            status, body = _read_response(connection, timeout_s=30)
        finally:
            connection.close()
        assert status == 200 and len(body["predictions"]) == 1
        # uvicorn re-raises the signal once it has shut down, so a supervisor sees why it ended.
        assert stopping.process.wait(30) in (0, -signal.SIGTERM)
        assert "Finished server process" in stopping.output()


@pytest.mark.parametrize("format, runtime", [("onnx", "onnxruntime"), ("pt2", "aotinductor")])
def test_a_graph_file_is_served_for_predictions_only(cifar_classifier, images, tmp_path, capsys, format, runtime):
    graph_file = export_model(load_model(cifar_classifier), tmp_path / f"model.{format}", ExportSettings(format)).path
    with ServiceProcess(graph_file, "--threads", "1") as graph_service:
        answer = httpx.post(f"{graph_service.url}/predict", params={"top_k": 3}, files=form(images))
        metadata = httpx.get(f"{graph_service.url}/metadata").json()
        embed_answer = httpx.post(f"{graph_service.url}/embed", files=form(images[:1]))
        schema = httpx.get(f"{graph_service.url}/openapi.json").json()
    assert answer.status_code == 200, answer.text
    assert_same_predictions(answer.json()["predictions"], cli_predictions(graph_file, images, capsys))
    assert metadata["format"] == format and metadata["backend"] == runtime
    assert embed_answer.status_code == 404 and "/embed" not in schema["paths"]  # a graph that ends at the logits


def test_workers_each_load_the_model_and_answer(cifar_classifier, images, service):
    with ServiceProcess(cifar_classifier, "--threads", "1", "--backend", "eager", "--workers", "2") as workers:
        answer = httpx.post(f"{workers.url}/predict", files=form(images[:2]))
        pid = httpx.get(f"{workers.url}/health").json()["pid"]
        parent = workers.process.pid
    assert answer.status_code == 200
    assert pid != parent  # a worker process answered, not the supervisor
    single = httpx.post(f"{service.url}/predict", files=form(images[:2])).json()
    assert [p["top"][0]["label"] for p in answer.json()["predictions"]] == \
        [p["top"][0]["label"] for p in single["predictions"]]


@pytest.mark.parametrize("arguments, words", [
    (["--checkpoint", "missing.safetensors"], "does not exist"),
    (["--checkpoint", "model.bin"], "neither a .safetensors"),
    (["--max-batch", "0"], "max-batch must be positive"),
    (["--max-wait-ms", "-1"], "max-wait-ms must be 0 or more"),
    (["--max-images", "64", "--max-queue", "16"], "max-queue (16) must hold at least one whole request"),
    (["--backend", "tensorrt"], "unknown backend"),
    (["--workers", "2", "--backend", "tensorrt"], "unknown backend"),
])
def test_bad_arguments_fail_in_one_line_before_serving(cifar_classifier, arguments, words, capsys):
    if "--checkpoint" not in arguments:
        arguments = ["--checkpoint", str(cifar_classifier), *arguments]
    threads = torch.get_num_threads()
    try:
        assert main(["serve", "--port", "0", "--threads", str(threads), *arguments]) == 2
    finally:
        torch.set_num_threads(threads)  # the service sets its threads as it starts: keep this worker's
    error = capsys.readouterr().err.strip()
    assert error.startswith("resnetlab: error:") and words in error and "\n" not in error


def test_a_port_in_use_fails_in_one_line_before_the_model_loads(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        never_read = tmp_path / "model.safetensors"  # does not exist: the address is checked first
        assert main(["serve", "--checkpoint", str(never_read), "--host", "127.0.0.1", "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip() == (f"resnetlab: error: cannot listen on 127.0.0.1:{port}: Address already "
                                               "in use; choose another --host or --port, or stop what listens there")
