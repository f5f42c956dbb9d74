"""`mlc_llm serve MODEL`: the OpenAI-compatible REST server (FastAPI + uvicorn over AsyncMLCEngine).

    mlc_llm serve model.gguf --mode server --overrides "max_num_sequence=8;max_total_seq_length=4096"
    curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \
        -d '{"messages": [{"role": "user", "content": "Hi"}], "stream": true}'

The model is loaded before the port is bound, so a model that cannot load ends the command with an
error and nothing listens; the port is checked first, so a port in use ends it before the model loads. SIGTERM or Ctrl-C stops accepting connections, lets running requests
finish for `--shutdown-timeout` seconds, aborts what is left, stops the engine and exits with 0; a
second Ctrl-C quits at once.
"""

import argparse
import json
import logging
import os
import sys
from typing import Any, List, Sequence, Union

EXIT_OK = 0
EXIT_ERROR = 1

logger = logging.getLogger("mlc_llm.serve.server")

# Read when --api-key is not given, so the key need not appear in `ps` or /proc/PID/cmdline. Only
# this name: a key meant for another server (VLLM_API_KEY, OPENAI_API_KEY) is not silently reused.
API_KEY_ENV = "MLC_LLM_API_KEY"

DESCRIPTION = f"""Serve a model behind an OpenAI-compatible REST API.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus). Request bodies must be sent as Content-Type: application/json.

Environment: {API_KEY_ENV}, the API key when --api-key is not given (the recommended way: a key on
the command line is visible to every user of the machine). VLLM_API_KEY is not read."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..serve.server.settings import (
        DEFAULT_BODY_TIMEOUT_S,
        DEFAULT_HEADER_TIMEOUT_S,
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_N,
        DEFAULT_REQUEST_TOKENS_PER_WINDOW,
    )

    parser.add_argument("model", help="a GGUF file, an HF or MLC model directory, or HF://org/repo")
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda" or "cuda:N" (default: auto)')
    parser.add_argument("--model-lib", default=None, help="accepted for compatibility; kernels are built in")
    parser.add_argument(
        "--mode",
        choices=["local", "interactive", "server"],
        default="local",
        help="engine preset: local = 4 sequences, interactive = 1, server = as many as fit (default: local)",
    )
    parser.add_argument(
        "--overrides",
        default=None,
        help='engine settings as "key=value;key=value", e.g. "max_num_sequence=8;max_total_seq_length=4096"',
    )
    parser.add_argument(
        "--prefix-cache-mode", choices=["disable", "radix"], default=None, help="prefix caching (default: radix)"
    )
    parser.add_argument("--enable-tracing", action="store_true", help="record per-request events")
    parser.add_argument(
        "--enable-debug", action="store_true", help="serve MLC's debug routes (POST /debug/dump_event_trace)"
    )
    parser.add_argument(
        "--embedding-model",
        default=None,
        help="also serve POST /v1/embeddings with this decoder embedding model (e.g. Qwen3-Embedding), on --device",
    )
    parser.add_argument(
        "--speculative-mode",
        choices=["disable", "small_draft", "eagle", "medusa", "ngram"],
        default="disable",
        help="speculative decoding: small_draft (needs --additional-models) or ngram (prompt lookup)",
    )
    parser.add_argument(
        "--additional-models", nargs="*", default=[], help='draft models ("path" or "path:model_lib") for small_draft'
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require `Authorization: Bearer KEY` on /v1 routes (default: ${API_KEY_ENV} if set, else no key)",
    )
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="the model id shown by /v1/models and accepted in requests (default: MODEL as given)",
    )
    parser.add_argument(
        "--allow-origins",
        type=_json_list,
        default=[],
        help="CORS origins as a JSON list, e.g. '[\"*\"]' (default: no CORS headers)",
    )
    parser.add_argument(
        "--max-body-size",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body in bytes; larger ones get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT_S,
        help="seconds a client may take to send a request body; slower ones get 408 (default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT_S,
        help="seconds a client may take to send a request's headers; slower connections are closed "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-n",
        type=int,
        default=DEFAULT_MAX_N,
        help="largest `n` (choices) one request may ask for, at most 128 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-tokens",
        type=int,
        default=None,
        help="most tokens one request may use: prompt + n x max_tokens, an unset max_tokens counting as "
        f"the rest of the context window (default: {DEFAULT_REQUEST_TOKENS_PER_WINDOW} x the context window). "
        "A max_tokens that does not fit in the context window with the prompt is refused (400), as OpenAI does",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds running requests may take to finish on SIGTERM / Ctrl-C (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default="info",
        help="log level of the server and the engine (default: info)",
    )
    parser.add_argument(
        "--no-access-log", action="store_true", help="do not log one line per request (query strings are never logged)"
    )
    parser.add_argument(
        "--kv-events-endpoint",
        default=None,
        help="publish prefix-cache events in vLLM's format on this ZeroMQ PUB endpoint, e.g. tcp://*:5557, for "
        'prefix-aware routers such as llm-d (needs pip install "mlc_llm[kv-events]")',
    )
    parser.add_argument("--kv-events-topic", default="", help="ZeroMQ topic of the KV events (default: empty, as vLLM)")


def _port_in_use(host: str, port: int) -> str:
    """Why `host:port` cannot be listened on (as uvicorn binds it), or "" when it can."""
    import socket

    if port == 0:
        return ""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return str(e)
    return ""


def _json_list(text: str) -> List[str]:
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError("expected a JSON list of strings")
    return value


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve a model behind an OpenAI-compatible REST API",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlc_llm serve", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


def main(args: Union[argparse.Namespace, Sequence[str], None] = None) -> int:
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(None if args is None else list(args))
    # Imported here: `mlc_llm --help` must not pay for the web stack or the engine.
    from ..protocol.errors import MLCError
    from ..serve.engine import AsyncMLCEngine
    from ..serve.server import ServerSettings, create_app
    from ..serve.server.access_log import install_access_log_filter
    from ..serve.server.lifecycle import run_server
    from .overrides import engine_config_from_overrides

    _configure_logging(args.log_level)
    install_access_log_filter()
    # Before the model loads (which can take minutes): a port already taken would only fail after it.
    busy = _port_in_use(args.host, args.port)
    if busy:
        print(f"mlc_llm serve: cannot listen on {args.host}:{args.port}: {busy}", file=sys.stderr)
        return EXIT_ERROR
    try:
        engine_config = engine_config_from_overrides(args.overrides)
        if args.prefix_cache_mode is not None:
            from ..serve.config import EngineConfig

            engine_config = engine_config or EngineConfig()
            engine_config.prefix_cache_mode = args.prefix_cache_mode
        engine = AsyncMLCEngine(
            args.model,
            device=args.device,
            model_lib=args.model_lib,
            mode=args.mode,
            additional_models=args.additional_models or None,
            speculative_mode=args.speculative_mode,
            engine_config=engine_config,
            enable_tracing=args.enable_tracing,
            verbose=args.log_level in ("info", "debug"),
            enable_kv_events=args.kv_events_endpoint is not None,
        )
        embeddings = None
        if args.embedding_model:
            from ..serve.embedding_engine import AsyncEmbeddingEngine

            embeddings = AsyncEmbeddingEngine(args.embedding_model, device=args.device)
    except (MLCError, ImportError) as err:  # bad arguments, a model that cannot load, no native engine
        print(f"mlc_llm serve: {err}", file=sys.stderr)
        return EXIT_ERROR

    settings = ServerSettings.for_model(
        args.model,
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=args.max_body_size,
        body_timeout_s=args.body_timeout,
        header_timeout_s=args.header_timeout,
        max_n=args.max_n,
        max_request_tokens=args.max_request_tokens,
        shutdown_timeout_s=args.shutdown_timeout,
        served_model_name=args.served_model_name or "",
        allow_origins=args.allow_origins,
        enable_debug=args.enable_debug,
    )
    app = create_app(engine, settings, embeddings, args.embedding_model or "")
    publisher = None
    try:
        if args.kv_events_endpoint is not None:
            from ..serve.server.kv_events import KvEventPublisher

            publisher = KvEventPublisher(engine.kv_events, args.kv_events_endpoint, args.kv_events_topic)
        started = run_server(app, settings, engine.reset, log_level=args.log_level, access_log=not args.no_access_log)
    except (ImportError, OSError) as err:  # no pyzmq / msgspec, or an endpoint that cannot be bound
        print(f"mlc_llm serve: --kv-events-endpoint: {err}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as exit_:  # uvicorn exits this way when it cannot bind the port
        return int(exit_.code or EXIT_ERROR)
    finally:
        if publisher is not None:
            publisher.close()
        engine.terminate()
        if embeddings is not None:
            embeddings.terminate()
    logger.info("server stopped")
    return EXIT_OK if started else EXIT_ERROR


def _configure_logging(level: str) -> None:
    package_logger = logging.getLogger("mlc_llm")
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        package_logger.addHandler(handler)
    package_logger.setLevel(level.upper())


if __name__ == "__main__":
    sys.exit(main())
