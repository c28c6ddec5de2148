"""The ``chainette`` command line (typer + rich) and the live progress display."""

from __future__ import annotations

from .app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``chainette`` console script."""
    app()
