"""``resnetlab serve``: a model file behind an HTTP endpoint, with dynamic batching and a web page."""
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(*args, **kwargs):  # FastAPI and the backends load only when a service is made
    from .app import create_app as build

    return build(*args, **kwargs)
