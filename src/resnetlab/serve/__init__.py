"""``resnetlab serve``: a model file behind an HTTP endpoint, with dynamic batching and a web page."""
from .app import create_app
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
