"""Serving a chain over HTTP (``chainette serve``): SSE and WebSocket around a ``ChainService``."""

from .app import DEFAULT_MAX_BODY, create_app

__all__ = ["DEFAULT_MAX_BODY", "create_app"]
