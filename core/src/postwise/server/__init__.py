"""The bundled Litestar server."""

from postwise.server.app import create_app

__all__ = ["create_app"]
