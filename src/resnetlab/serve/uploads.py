"""Images out of a request: multipart ``file`` fields or a raw body, decoded and cropped, or a
``RequestError`` carrying the HTTP status that says what was wrong with them."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch
from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..data.decode import decode_image_bytes
from ..errors import DataError, ImageTooLarge, NotAnImage
from .model import ServedModel

FIELD = "file"
FORM_FIELD_BYTES = 64 * 1024  # text fields besides the files are ignored; they need not be big


class RequestError(Exception):
    """A request the service refuses: answered with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class Upload:
    name: str  # the file name the client gave, or "body" for a raw upload
    data: bytes


async def read_uploads(request: Request, max_images: int) -> list[Upload]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _multipart(request, max_images)
    if content_type == "application/octet-stream" or content_type.startswith("image/"):
        data = await request.body()
        if not data:
            raise RequestError(400, "the request body is empty; send the image's bytes")
        return [Upload("body", data)]
    sent = f"not {content_type}" if content_type else "with a Content-Type header saying which"
    raise RequestError(415, f"send images as multipart/form-data (field {FIELD!r}) or as a raw image/* "
                            f"or application/octet-stream body, {sent}")


async def _multipart(request: Request, max_images: int) -> list[Upload]:
    from starlette.exceptions import HTTPException

    try:
        form = await request.form(max_files=max_images, max_fields=max_images, max_part_size=FORM_FIELD_BYTES)
    except HTTPException as error:  # malformed multipart, or more parts than allowed
        if "Too many files" in str(error.detail):
            raise RequestError(413, f"at most {max_images} images a request (the service's --max-images); send the "
                                    "rest in another request") from error
        raise RequestError(400, str(error.detail)) from error
    try:
        files = [item for item in form.getlist(FIELD) if isinstance(item, UploadFile)]
        if not files:
            raise RequestError(400, f"no image in the form: send each image as a file in field {FIELD!r}")
        return [Upload(item.filename or f"{FIELD}{position}", await item.read())
                for position, item in enumerate(files)]
    finally:
        await form.close()


def crop_uploads(uploads: list[Upload], model: ServedModel, max_pixels: int) -> list[torch.Tensor]:
    """Each upload decoded and cropped as ``resnetlab predict`` does; the first bad one raises."""
    crops = []
    for upload in uploads:
        try:
            crops.append(model.crop(decode_image_bytes(upload.data, upload.name, max_pixels)))
        except NotAnImage as error:
            raise RequestError(415, str(error)) from error
        except ImageTooLarge as error:
            raise RequestError(413, str(error)) from error
        except DataError as error:
            raise RequestError(400, str(error)) from error
    return crops


async def decode_uploads(uploads: list[Upload], model: ServedModel, max_pixels: int) -> list[torch.Tensor]:
    # Decoding is CPU work: on a thread, so the event loop keeps serving other clients.
    return await asyncio.to_thread(crop_uploads, uploads, model, max_pixels)
