"""The OpenAI server on Ray Serve: replicas of the model behind a prefix-aware front.

    pip install "mlc_llm[ray]"
    python -m mlc_llm.examples.ray_serve                       # SmolLM2, 2 replicas on this machine's CPU
    python -m mlc_llm.examples.ray_serve MODEL --device cuda --replicas 4 --gpus-per-replica 1
    python -m mlc_llm.examples.ray_serve MODEL --min-replicas 1 --max-replicas 4   # autoscaling

It starts Ray (or joins the cluster in RAY_ADDRESS), deploys `build_app`, asks the deployment one
chat question with the openai client, and serves until Ctrl-C (`--once`: stops after the question).
Any OpenAI client then works against http://HOST:PORT/v1.
"""

import argparse
import time
from typing import Any, Dict, List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlc_llm.examples.ray_serve", description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="a GGUF file, an HF or MLC directory (default: SmolLM2)")
    parser.add_argument("--device", default="cpu", help='"cpu", "cuda" or "auto" (default: cpu)')
    parser.add_argument("--mode", default="local", choices=["local", "interactive", "server"])
    parser.add_argument("--replicas", type=int, default=2, help="fixed number of replicas (default: 2)")
    parser.add_argument("--min-replicas", type=int, default=None, help="with --max-replicas: autoscale between the two")
    parser.add_argument("--max-replicas", type=int, default=None)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--gpus-per-replica", type=float, default=0.0)
    parser.add_argument("--max-total-seq-length", type=int, default=None, help="KV-cache tokens per replica")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--once", action="store_true", help="ask one question, then shut down")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    import openai
    import ray
    from ray import serve

    from mlc_llm.examples.default_model import smollm2_path
    from mlc_llm.serve.integrations.ray import build_app

    model = args.model or smollm2_path()
    engine_kwargs: Dict[str, Any] = {"device": args.device, "mode": args.mode}
    if args.max_total_seq_length is not None:
        engine_kwargs["max_total_sequence_length"] = args.max_total_seq_length
    autoscaling = None
    if args.min_replicas is not None or args.max_replicas is not None:
        low = args.min_replicas or 1
        autoscaling = {"min_replicas": low, "max_replicas": max(low, args.max_replicas or low), "target_ongoing_requests": 8}

    ray.init()  # joins RAY_ADDRESS when set, else starts a local Ray
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(
        model,
        num_replicas=args.replicas,
        autoscaling_config=autoscaling,
        ray_actor_options={"num_cpus": args.cpus_per_replica, "num_gpus": args.gpus_per_replica},
        engine_kwargs=engine_kwargs,
    )
    serve.run(app, name="mlc_llm", route_prefix="/")
    url = f"http://{args.host}:{args.port}/v1"
    print(f"serving {model} at {url}")

    client = openai.OpenAI(base_url=url, api_key="unused")
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the meaning of life?"}], max_tokens=64, stream=True
    ):
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()
    try:
        while not args.once:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()  # each replica drains its requests, then stops its engine
        ray.shutdown()


if __name__ == "__main__":
    main()
