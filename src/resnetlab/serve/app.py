"""The HTTP service: FastAPI endpoints around a ``ServedModel`` and its ``DynamicBatcher``."""
from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from importlib.resources import files

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from .. import __version__
from .batcher import DynamicBatcher, QueueFull
from .metrics import ServeMetrics
from .middleware import RecordMetrics, RequestLimits
from .model import ImageOutput, ServedModel
from .schemas import (ERROR_RESPONSES, IMAGE_BODY, EmbedResponse, Health, ImageEmbedding, ImagePrediction,
                      Label, Latency, PredictResponse)
from .settings import ServeSettings
from .uploads import RequestError, decode_uploads, read_uploads

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1  # what a 503 for a full queue tells the client to wait


def create_app(settings: ServeSettings, model: ServedModel | None = None) -> FastAPI:
    """The service for ``settings.checkpoint`` (or an already loaded ``model``), ready for uvicorn."""
    torch.set_num_threads(settings.threads_per_worker)  # before the backends size their thread pools
    model = model or ServedModel(settings.checkpoint, settings.backend)
    metrics = ServeMetrics(settings.max_batch)
    batcher = DynamicBatcher(model.infer, settings.max_batch, settings.max_wait_ms, settings.max_queue,
                             metrics.record_batch)
    metrics.queued.set_function(lambda: batcher.queued)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        log.info("serving %s (%s, %s) with batches of up to %d images", model.deployed.arch,
                 model.deployed.format, model.deployed.backend, settings.max_batch)
        yield
        await batcher.stop()  # uvicorn gets here once in-flight requests have been answered

    app = FastAPI(title=f"resnetlab: {model.deployed.arch}", version=__version__, lifespan=lifespan,
                  description="Image classification and embeddings with a ResNet. Send images as "
                              "multipart/form-data (one or more files in field `file`) or as a raw body.")

    async def images_through_model(request: Request) -> tuple[list[str], list[ImageOutput], Latency]:
        started = time.perf_counter()
        try:
            batcher.check_room(1)  # a full queue refuses before the body is read and decoded
            with batcher.incoming():
                uploads = await read_uploads(request, settings.max_images)
                crops = await decode_uploads(uploads, model, settings.max_pixels)
            decoded = time.perf_counter()
            outputs = await batcher.submit(crops)
        except QueueFull as error:
            # Connection: close, as for an early 413: the server will not read what is left of the body.
            raise RequestError(503, f"the service is busy: {error}; retry shortly",
                               headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}) from error
        done = time.perf_counter()
        return [upload.name for upload in uploads], outputs, Latency(
            decode_ms=1000 * (decoded - started), inference_ms=1000 * (done - decoded), total_ms=1000 * (done - started))

    if model.classifies:
        @app.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=IMAGE_BODY,
                  summary="Top-k classes of each image")
        async def predict(request: Request, top_k: int = Query(settings.top_k, ge=1, le=1000)) -> PredictResponse:
            names, outputs, latency = await images_through_model(request)
            k = min(top_k, model.deployed.num_classes)
            predictions = []
            for name, output in zip(names, outputs):
                top = output.probabilities.topk(k)
                predictions.append(ImagePrediction(file=name, top=[
                    Label(label=model.class_names[i], probability=p)
                    for p, i in zip(top.values.tolist(), top.indices.tolist())]))
            return PredictResponse(model=model.deployed.arch, predictions=predictions, latency=latency)

    if model.embedding_dim is not None:
        @app.post("/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES, openapi_extra=IMAGE_BODY,
                  summary="Unit-length embedding of each image, as `resnetlab embed` computes it")
        async def embed(request: Request) -> EmbedResponse:
            names, outputs, latency = await images_through_model(request)
            return EmbedResponse(model=model.deployed.arch, dimension=model.embedding_dim, latency=latency, embeddings=[
                ImageEmbedding(file=name, embedding=output.embedding.tolist()) for name, output in zip(names, outputs)])

    @app.get("/health", response_model=Health, summary="Whether the service is up")
    async def health() -> Health:
        return Health(status="ok", pid=os.getpid())

    @app.get("/metadata", summary="The model, its classes and preprocessing, and the service's limits")
    async def metadata() -> dict:
        return {**model.metadata(), "version": __version__, "endpoints": sorted(
                    route.path for route in app.routes if getattr(route, "include_in_schema", False)),
                "limits": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                           "max_queue": settings.max_queue,
                           "max_images": settings.max_images, "max_body_bytes": settings.max_body_bytes,
                           "max_pixels": settings.max_pixels, "top_k": settings.top_k}}

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(files(__package__).joinpath("page.html").read_text(encoding="utf-8"))

    _answer_errors_as_json(app)
    endpoints = {route.path for route in app.routes}
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes,
                       idle_timeout_s=settings.request_timeout_s)
    app.add_middleware(RecordMetrics, metrics=metrics, endpoints=endpoints)
    return app


def app_from_environment() -> FastAPI:
    """What each uvicorn worker process imports (``--workers`` > 1): the settings come in the environment."""
    return create_app(ServeSettings.from_environment())


def _answer_errors_as_json(app: FastAPI) -> None:
    """Every refusal is ``{"error": "..."}`` with its status; nothing reaches the client as a traceback."""

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)
