"""``pansight serve``: a local web page and JSON API to look at every rung's results.

>>> from pansight.serve import create_app, load_registry
>>> app = create_app(load_registry([Path("runs/sem/model.pt")]))   # any ASGI server runs it
"""

from __future__ import annotations

from pathlib import Path

from pansight.serve.app import ServeLimits, create_app
from pansight.serve.registry import ModelRegistry, Predictor, load_registry

__all__ = [
    "LOOPBACK_HOSTS",
    "ModelRegistry",
    "Predictor",
    "ServeLimits",
    "create_app",
    "load_registry",
    "serve",
]


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
"""The names a server bound to a loopback address answers to."""


def serve(
    checkpoints: list[Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
) -> None:
    """Load ``checkpoints`` and serve the page on ``http://host:port/`` until interrupted.

    Bound to a loopback address, the server answers only requests addressed to a loopback
    name (:data:`LOOPBACK_HOSTS`); bound elsewhere, to any name."""
    # uvicorn is optional: only a running server needs it
    import uvicorn

    allowed_hosts = LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else None
    app = create_app(load_registry(checkpoints), limits, allowed_hosts)
    uvicorn.run(app, host=host, port=port, log_level="warning")
