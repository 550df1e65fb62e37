"""What the endpoints take and answer, as the OpenAPI schema (``GET /openapi.json``) documents it."""
from __future__ import annotations

from pydantic import BaseModel

from .uploads import FIELD


class Label(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    file: str  # the uploaded file's name, or "body" for a raw upload
    top: list[Label]  # most probable first


class Latency(BaseModel):
    decode_ms: float  # reading, decoding and cropping the uploads
    inference_ms: float  # waiting for a batch, and the forward pass
    total_ms: float


class PredictResponse(BaseModel):
    model: str
    predictions: list[ImagePrediction]  # in the order of the uploads
    latency: Latency


class ImageEmbedding(BaseModel):
    file: str
    embedding: list[float]  # unit length


class EmbedResponse(BaseModel):
    model: str
    dimension: int
    embeddings: list[ImageEmbedding]  # in the order of the uploads
    latency: Latency


class Health(BaseModel):
    status: str
    pid: int  # the worker process that answered


class ErrorResponse(BaseModel):
    error: str


ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "An empty body, a damaged image or a malformed form"},
    408: {"model": ErrorResponse, "description": "The client stopped sending the body"},
    413: {"model": ErrorResponse, "description": "Too many bytes, images or pixels"},
    415: {"model": ErrorResponse, "description": "Not an image, or a content type the service does not take"},
    422: {"model": ErrorResponse, "description": "A query parameter out of range"},
    503: {"model": ErrorResponse, "description": "Too many images already waiting for the model (--max-queue); "
                                                 "retry after the seconds in the Retry-After header"},
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": [FIELD],
        "properties": {FIELD: {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"},
                               "description": "one or more image files (JPEG, PNG, WebP, BMP, ...)"}}}},
    "image/jpeg": _BINARY,
    "image/png": _BINARY,
    "application/octet-stream": _BINARY,
}}}
