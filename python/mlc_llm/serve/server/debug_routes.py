"""MLC's debug endpoint POST /debug/dump_event_trace, mounted only with `mlc_llm serve --enable-debug`
(as MLC mounts its debug routes): the recorded per-request events say what every request did and
when, which is for whoever runs the server, not for every client of it.

The body names the model (`{"model": ...}`, as MLC asks); the answer is the Chrome-trace JSON of the
engine's events (chrome://tracing, Perfetto). A server started without --enable-tracing records
nothing and answers 400, as MLC does.
"""

import json

from fastapi import APIRouter, Request
from starlette.responses import Response

from .errors import NOT_FOUND, APIError
from .routes import JSON, read_json_object
from .state import ServerState

router = APIRouter()


@router.post("/debug/dump_event_trace")
async def dump_event_trace(request: Request) -> Response:
    state: ServerState = request.app.state.server
    body = await read_json_object(request)
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, 'the body must name the model: {"model": "..."}', param="model")
    if not state.settings.serves(model):
        raise APIError(404, f"the model {model!r} is not served", type=NOT_FOUND, param="model", code="model_not_found")
    engine = state.engine
    if not engine._args.enable_tracing:
        raise APIError(400, f"the model {model!r} does not record events; start the server with --enable-tracing")
    trace = json.loads(engine.trace())
    return Response(json.dumps(trace), media_type=JSON)
