"""Ray Serve deployments of the OpenAI server: replicas of `mlc_llm serve`, each with its own
AsyncMLCEngine, behind one front that routes by prompt prefix.

    pip install "mlc_llm[ray]"
    python -m mlc_llm.examples.ray_serve MODEL --replicas 2          # or, in Python:

    from ray import serve
    from mlc_llm.serve.integrations.ray import build_app
    serve.run(build_app("model.gguf", num_replicas=2, engine_kwargs={"device": "cpu"}))
    # OpenAI clients: base_url="http://127.0.0.1:8000/v1"

Two deployments, as Ray Serve LLM has (its OpenAiIngress and LLMServer):

- `MLCServer`, the model replicas: each runs the whole app of `mlc_llm serve` (server/app.py) in its
  process, so validation, OpenAI error objects, SSE streams, /health and the vLLM-named /metrics are
  the same as there. Ray calls `check_health` (the engine thread answers) and restarts a replica
  that fails it or dies; on shutdown (downscaling, redeploy, `serve.shutdown`) Ray stops sending it
  requests and waits up to `graceful_shutdown_timeout_s` (the server's `shutdown_timeout_s`) for
  running ones, then `__del__` refuses new ones, aborts what is left (streams end with
  finish_reason "abort") and stops the engine, as `mlc_llm serve` does on SIGTERM.
- `MLCFront`, the HTTP ingress: reads the body, and hands it to a replica chosen by
  `ray_router.PrefixAwareRouter` (our own router on Ray's public custom-router API; Ray Serve LLM's
  PrefixCacheAffinityRouter needs vLLM, see there). The replica's answer is passed through as it
  streams. When a replica dies before it has sent anything, the request is sent again to another
  one (`attempts`); when it dies mid-stream, the stream ends with an OpenAI error event, and when no
  replica can take it the answer is a 503 error object: a client never hangs on a dead replica.

Every answer carries `x-mlc-replica` (the Ray actor name of the replica that produced it), so the
replica's own /metrics and /health can be told apart; `ray.get_actor(name, namespace="serve")`
finds the actor.
"""

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Dict, Optional, Union

from fastapi import FastAPI, Request
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.responses import Response, StreamingResponse

from ..server.errors import UNAVAILABLE, ErrorInfo, error_body, error_response
from ..server.settings import DEFAULT_MAX_BODY_BYTES
from .asgi_call import HttpRequest, ResponseHead, call_asgi

logger = logging.getLogger("mlc_llm.serve.server")

REPLICA_HEADER = "x-mlc-replica"
# Hop-by-hop headers of the replica's answer: the front's own connection decides them.
_HOP_HEADERS = {b"connection", b"keep-alive", b"transfer-encoding"}
# The failures that mean "this replica is gone or cannot take it": another one may serve the request.
_REPLICA_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
# The chat and completion routes whose prompt decides the prefix-cache blocks a request can reuse.
_PROMPT_FIELDS = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}


@serve.deployment(name="MLCServer")
class MLCServer:
    """One replica: an AsyncMLCEngine and the app of `mlc_llm serve` around it."""

    def __init__(self, model: str, engine_kwargs: Dict[str, Any], server_kwargs: Dict[str, Any]) -> None:
        from ..engine import AsyncMLCEngine
        from ..server import ServerSettings, create_app

        self._engine = AsyncMLCEngine(model, **engine_kwargs)
        self._app = create_app(self._engine, ServerSettings.for_model(model, **server_kwargs))
        self._name = serve.get_replica_context().replica_id.to_full_id_str()

    async def handle(self, request: HttpRequest) -> AsyncIterator[Union[ResponseHead, bytes]]:
        """One HTTP request through the app: a ResponseHead, then the body as it is produced."""
        async for piece in call_asgi(self._app, request):
            if isinstance(piece, ResponseHead):
                piece.replica = self._name
            yield piece

    async def check_health(self) -> None:
        """Raises once the engine thread has stopped (EngineDeadError): Ray then replaces the replica."""
        await asyncio.to_thread(self._engine._metrics)

    def __del__(self) -> None:
        """Called by Ray after its drain (and again by the garbage collector: every step is idempotent):
        late requests get 503, what still runs is aborted, the engine stops."""
        from ..server import begin_draining

        if hasattr(self, "_app"):  # a constructor that failed leaves nothing to stop
            begin_draining(self._app)
            self._engine.reset()
            self._engine.terminate()


# serve.ingress pickles the routes when MLCFront is decorated: everything they use is defined above it.
_front = FastAPI(title="mlc_llm (Ray Serve)", docs_url=None, redoc_url=None, openapi_url=None)


def prefix_text(path: str, body: bytes) -> str:
    """The prompt of a chat or completion request as text, for the router ("" for anything else or
    a body that is not JSON: the replica reports that)."""
    field = _PROMPT_FIELDS.get(path)
    if field is None:
        return ""
    try:
        value = json.loads(body).get(field)
    except (ValueError, AttributeError):
        return ""
    if isinstance(value, str):
        return value
    # Compact JSON keeps shared leading messages (or token ids) a shared leading string.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False) if value is not None else ""


def _unavailable(message: str) -> Response:
    return error_response(503, ErrorInfo(message=message, type=UNAVAILABLE, code="replica_unavailable"))


async def _rest(stream: DeploymentResponseGenerator, event_stream: bool) -> AsyncIterator[bytes]:
    """The body pieces after the head. A replica lost mid-stream ends an SSE stream with an OpenAI
    error event (the openai client raises APIError on it); any other body is cut off, which clients
    report as an incomplete read. A client that goes away cancels the replica's work."""
    try:
        async for piece in stream:
            yield piece  # type: ignore[misc]
    except _REPLICA_GONE as e:
        logger.warning("replica failed mid-response: %s", e)
        if not event_stream:
            raise
        info = ErrorInfo(message=f"the replica serving this stream failed: {type(e).__name__}", type=UNAVAILABLE, code="replica_unavailable")
        yield f"data: {json.dumps(error_body(info))}\n\n".encode()
    finally:
        stream.cancel()


@serve.deployment(name="MLCFront")
@serve.ingress(_front)
class MLCFront:
    """The HTTP ingress: forwards every request to an MLCServer replica and streams its answer back."""

    def __init__(self, server: DeploymentHandle, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, attempts: int = 3) -> None:
        self._server = server.options(stream=True, method_name="handle")
        self._max_body_bytes = max_body_bytes
        self._attempts = max(1, attempts)

    async def _body(self, request: Request) -> Optional[bytes]:
        """The body, or None once it passes the size limit (read no further)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @_front.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
    async def forward(self, request: Request) -> Response:
        body = await self._body(request)
        if body is None:
            info = ErrorInfo(message=f"request body larger than {self._max_body_bytes} bytes", type="invalid_request_error")
            return error_response(413, info)
        path = request.url.path
        proxied = HttpRequest(
            method=request.method,
            path=path,
            query_string=request.scope.get("query_string", b""),
            headers=list(request.headers.raw),
            body=body,
            prefix_text=prefix_text(path, body),
        )
        last_error = "no replica answered"
        for attempt in range(self._attempts):
            stream: DeploymentResponseGenerator = self._server.remote(proxied)
            try:
                head = await stream.__anext__()
            except BackPressureError as e:
                stream.cancel()
                return _unavailable(f"every replica is busy: {e}")
            except _REPLICA_GONE as e:
                # Nothing reached the client yet: another replica may take the request.
                last_error = f"{type(e).__name__}: {e}"
                logger.warning("replica failed before answering (attempt %d of %d): %s", attempt + 1, self._attempts, last_error)
                continue
            except StopAsyncIteration:
                last_error = "the replica ended the request without an answer"
                continue
            assert isinstance(head, ResponseHead)
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers if k.lower() not in _HOP_HEADERS}
            headers[REPLICA_HEADER] = head.replica
            event_stream = headers.get("content-type", "").startswith("text/event-stream")
            return StreamingResponse(_rest(stream, event_stream), status_code=head.status, headers=headers)
        return _unavailable(f"no replica could serve the request: {last_error}")


def build_app(
    model: str,
    *,
    num_replicas: Optional[int] = 1,
    autoscaling_config: Optional[Dict[str, Any]] = None,
    max_ongoing_requests: int = 32,
    ray_actor_options: Optional[Dict[str, Any]] = None,
    prefix_aware_routing: bool = True,
    router_kwargs: Optional[Dict[str, Any]] = None,
    health_check_period_s: float = 10.0,
    health_check_timeout_s: float = 30.0,
    engine_kwargs: Optional[Dict[str, Any]] = None,
    server_kwargs: Optional[Dict[str, Any]] = None,
    attempts: int = 3,
    front_options: Optional[Dict[str, Any]] = None,
) -> "serve.Application":
    """The Ray Serve application: `num_replicas` MLCServer replicas of `model` (or, with
    `autoscaling_config`, Ray's autoscaler decides, e.g. {"min_replicas": 1, "max_replicas": 4,
    "target_ongoing_requests": 8}) behind one MLCFront.

    engine_kwargs: AsyncMLCEngine's keyword arguments (device, mode, engine_config, ...).
    server_kwargs: ServerSettings fields (api_key, served_model_name, max_n, shutdown_timeout_s, ...).
    ray_actor_options: per replica, e.g. {"num_cpus": 4} or {"num_gpus": 1}.
    prefix_aware_routing: route by prompt prefix (PrefixAwareRouter, `router_kwargs` to its
    initialize_state); False: Ray's default power of two choices.
    attempts: how many replicas a request is tried on when they die before answering.
    front_options: MLCFront's deployment options (default: one replica, no CPU, 4,096 requests at
    once: it only forwards, and Ray's default of 5 would queue streams in front of idle replicas)."""
    from ray.serve.config import RequestRouterConfig

    server_kwargs = dict(server_kwargs or {})
    options: Dict[str, Any] = {
        "max_ongoing_requests": max_ongoing_requests,
        "health_check_period_s": health_check_period_s,
        "health_check_timeout_s": health_check_timeout_s,
        # Ray's drain is the server's: running requests may finish for this long.
        "graceful_shutdown_timeout_s": float(server_kwargs.get("shutdown_timeout_s", 30.0)),
        "ray_actor_options": dict(ray_actor_options or {}),
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
        options["num_replicas"] = "auto"
    else:
        options["num_replicas"] = num_replicas
    if prefix_aware_routing:
        from .ray_router import PrefixAwareRouter

        options["request_router_config"] = RequestRouterConfig(
            request_router_class=PrefixAwareRouter, request_router_kwargs=dict(router_kwargs or {})
        )
    server = MLCServer.options(**options).bind(model, dict(engine_kwargs or {}), server_kwargs)
    max_body = int(server_kwargs.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))
    front = {"num_replicas": 1, "max_ongoing_requests": 4096, "ray_actor_options": {"num_cpus": 0}, **(front_options or {})}
    return MLCFront.options(**front).bind(server, max_body, attempts)
