"""The FastAPI application of `mlc_llm serve`: routes, error handlers and admission checks around
one AsyncMLCEngine.

The engine is built by the caller (cli/serve.py) before the app, so a model that fails to load
stops the process before it binds a port, and the caller terminates it after the server has
drained.
"""

from typing import Optional

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ..embedding_engine import AsyncEmbeddingEngine
from ..engine import AsyncMLCEngine
from . import debug_routes, embedding_routes, ops, routes
from .errors import install_error_handlers
from .guards import RequestGuard
from .metrics import ServerMetrics, route_label
from .settings import ServerSettings
from .state import ServerState


def create_app(
    engine: AsyncMLCEngine,
    settings: ServerSettings,
    embeddings: Optional[AsyncEmbeddingEngine] = None,
    embedding_model: str = "",
) -> FastAPI:
    """`embeddings` (optional): the engine of POST /v1/embeddings, loaded from `embedding_model`."""
    metrics = ServerMetrics(engine._metrics, settings.served_model_name)
    state = ServerState(engine=engine, settings=settings, metrics=metrics)
    app = FastAPI(title="mlc_llm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    app.include_router(routes.router)
    app.include_router(ops.router)
    app.include_router(embedding_routes.router)
    app.state.embeddings = embeddings
    app.state.embedding_model = embedding_model
    if settings.enable_debug:
        app.include_router(debug_routes.router)
    install_error_handlers(app)
    # The routers' own routes: how FastAPI stores included routers inside the app varies by version.
    known_routes = [*routes.router.routes, *ops.router.routes, *embedding_routes.router.routes]
    if settings.enable_debug:
        known_routes += debug_routes.router.routes
    app.add_middleware(
        RequestGuard,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        is_draining=lambda: state.draining,
        on_rejected=lambda scope, status: metrics.count(route_label(known_routes, scope), status),
    )
    if settings.allow_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.allow_origins, allow_methods=["*"], allow_headers=["*"]
        )
    return app


def begin_draining(app: FastAPI) -> None:
    """New /v1 requests get 503 from now on; running ones continue (called on SIGTERM / Ctrl-C)."""
    state: ServerState = app.state.server
    state.draining = True
