"""Operational endpoints: GET /health (= /health/ready), /health/ready and /health/live for Kubernetes
probes, and GET /metrics (Prometheus).

Readiness (may this replica get traffic?) fails while the server drains or the engine is stopped, so a
router or Service stops sending it requests; liveness (should the process be restarted?) only asks that
the event loop answers, so a draining or busy server is never killed for it."""

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from .errors import UNAVAILABLE, ErrorInfo, error_response
from .metrics import CONTENT_TYPE
from .state import ServerState

router = APIRouter()


@router.get("/health/live")
async def live() -> Response:
    """200 whenever the process answers (the engine and draining do not matter)."""
    return JSONResponse({"status": "alive"})


@router.get("/health")
@router.get("/health/ready")
async def health(request: Request) -> Response:
    """200 while the engine runs and the server takes requests; 503 once either stops."""
    state: ServerState = request.app.state.server
    if state.draining:
        return error_response(503, ErrorInfo(message="the server is shutting down", type=UNAVAILABLE))
    try:
        await asyncio.to_thread(state.engine._metrics)
    except Exception as exc:
        return error_response(503, ErrorInfo(message=f"the engine is not running: {exc}", type=UNAVAILABLE))
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state: ServerState = request.app.state.server
    # Rendering asks the engine thread for a snapshot; keep that wait off the event loop.
    text = await asyncio.to_thread(state.metrics.render)
    return Response(text, media_type=CONTENT_TYPE)
