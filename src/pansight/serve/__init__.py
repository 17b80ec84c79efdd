"""``pansight serve``: a local web page and JSON API to look at every rung's results.

>>> from pansight.serve import create_app, load_registry
>>> app = create_app(load_registry([Path("runs/sem/model.pt")]))   # any ASGI server runs it
"""

from __future__ import annotations

from pathlib import Path

from pansight.serve.app import ServeLimits, create_app
from pansight.serve.registry import ModelRegistry, Predictor, load_registry

__all__ = ["ModelRegistry", "Predictor", "ServeLimits", "create_app", "load_registry", "serve"]


def serve(
    checkpoints: list[Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
) -> None:
    """Load ``checkpoints`` and serve the page on ``http://host:port/`` until interrupted."""
    import uvicorn

    app = create_app(load_registry(checkpoints), limits)
    uvicorn.run(app, host=host, port=port, log_level="warning")
