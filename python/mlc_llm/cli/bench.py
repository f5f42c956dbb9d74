"""`mlc_llm bench`: load-test an OpenAI-compatible chat endpoint (this package's `mlc_llm serve`,
vLLM, SGLang, llama.cpp's server, ...).

For each concurrency (or request rate) it sends the same prompts, streams every answer, and reports
request and token throughput with TTFT, inter-token and end-to-end latency (mean, p50, p90, p99);
`--output` saves the numbers with the command line, and a PNG plots them.
"""

import argparse
import asyncio
import importlib.util
import os
import sys
from typing import Any, List, Optional, Tuple

EXIT_OK = 0
EXIT_ERROR = 1


def _positive_ints(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("concurrencies must be positive integers")
    return values


def _rates(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]  # float() also reads "inf"
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError("request rates must be positive (inf: all at once)")
    return values


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark an OpenAI-compatible endpoint (throughput, TTFT, ITL, latency)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("endpoint")
    target.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="API root (default: %(default)s)")
    target.add_argument("--model", default=None, help="model name to request (default: the first of /v1/models)")
    target.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default: $OPENAI_API_KEY)")
    target.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take (default: %(default)s)")

    load = parser.add_argument_group("workload")
    load.add_argument("--dataset", default=None, help="ShareGPT-format JSON file (default: synthetic prompts)")
    load.add_argument("--num-prompts", type=int, default=100, help="requests per scenario (default: %(default)s)")
    load.add_argument("--input-len", type=int, default=128, help="synthetic prompt length in tokens (default: %(default)s)")
    load.add_argument("--output-len", type=int, default=None,
                      help="tokens to generate per request (default: 128 synthetic, the recorded answer's length for --dataset)")
    load.add_argument("--ignore-eos", action="store_true", help="ask the server to always generate --output-len tokens")
    load.add_argument("--temperature", type=float, default=None, help="sampling temperature sent with each request")
    load.add_argument("--seed", type=int, default=0, help="seed of the prompts and of the arrival times")

    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--concurrency", type=_positive_ints, default=None,
                          help="comma-separated requests in flight, one scenario each, e.g. 1,4,16 (default: 1)")
    schedule.add_argument("--request-rate", type=_rates, default=None,
                          help="comma-separated Poisson arrival rates in req/s, one scenario each (capped by a "
                               "single --concurrency if given)")
    schedule.add_argument("--num-warmup", type=int, default=1, help="uncounted requests before each scenario")

    out = parser.add_argument_group("output")
    out.add_argument("--output", default=None, help="save the results as JSON here")
    out.add_argument("--plot", default=None, help="save a PNG here (default: --output with .png)")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    from ..bench import workload

    try:
        scenarios = _scenarios(args)
        if args.num_prompts < 1 or args.num_warmup < 0:
            raise ValueError("--num-prompts must be positive and --num-warmup not negative")
        for path in (args.output, args.plot):
            _ensure_parent(path)
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib: pip install 'mlc_llm[bench]'")
        if args.dataset:
            prompts = workload.sharegpt(args.dataset, args.num_prompts, args.output_len, args.seed)
        else:
            prompts = workload.synthetic(args.num_prompts, args.input_len, args.output_len or 128, args.seed)
    except (ValueError, OSError) as err:
        print(f"mlc_llm bench: {err}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return asyncio.run(_run(args, scenarios, prompts))
    except KeyboardInterrupt:
        print("mlc_llm bench: interrupted", file=sys.stderr)
        return 130


def _plot_path(args: argparse.Namespace) -> Optional[str]:
    """--plot, or --output with .png when matplotlib (the `bench` extra) is installed."""
    if args.plot:
        return str(args.plot)
    if not args.output:
        return None
    if importlib.util.find_spec("matplotlib") is None:
        print("mlc_llm bench: no plot: matplotlib is not installed (pip install 'mlc_llm[bench]')", file=sys.stderr)
        return None
    return os.path.splitext(args.output)[0] + ".png"


def _ensure_parent(path: Optional[str]) -> None:
    """Creates the folder of an output file now, so that a bad path fails before the benchmark."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _scenarios(args: argparse.Namespace) -> List[Any]:
    from ..bench.runner import Scenario

    if args.request_rate is None:
        return [Scenario(concurrency=c) for c in (args.concurrency or [1])]
    if args.concurrency is not None and len(args.concurrency) > 1:
        raise ValueError("with --request-rate, --concurrency is a single cap on requests in flight")
    cap = args.concurrency[0] if args.concurrency else None
    return [Scenario(concurrency=cap, request_rate=rate) for rate in args.request_rate]


async def _run(args: argparse.Namespace, scenarios: List[Any], prompts: List[Any]) -> int:
    from ..bench import report
    from ..bench.client import Endpoint
    from ..bench.plot import save_plot
    from ..bench.runner import run_scenario

    if args.model:
        model = args.model
    else:
        model, problem = await _first_model(args.base_url, args.api_key, args.timeout)
        if model is None:
            print(f"mlc_llm bench: no --model given and {args.base_url}/models {problem}", file=sys.stderr)
            return EXIT_ERROR
    endpoint = Endpoint(args.base_url, model, args.api_key, args.ignore_eos, args.temperature)
    summaries = []
    for scenario in scenarios:
        summary = await run_scenario(
            endpoint,
            prompts,
            scenario,
            num_warmup=min(args.num_warmup, len(prompts)),
            timeout_s=args.timeout,
            seed=args.seed,
            progress=False if args.no_progress else None,
        )
        print(report.scenario_table(summary), flush=True)
        print(flush=True)
        summaries.append(summary)
    if len(summaries) > 1:
        print(report.overview_table(summaries), flush=True)
    workload_info = {
        "dataset": args.dataset,
        "num_prompts": len(prompts),
        "input_len": None if args.dataset else args.input_len,
        "output_len": args.output_len if args.dataset else (args.output_len or 128),
        "ignore_eos": args.ignore_eos,
        "temperature": args.temperature,
        "seed": args.seed,
        "num_warmup": args.num_warmup,
    }
    if args.output:
        results = report.results_json(
            summaries, command=["mlc_llm", *sys.argv[1:]], endpoint=args.base_url, model=model, workload=workload_info
        )
        report.save_json(args.output, results)
        print(f"saved {args.output}")
    plot_path = _plot_path(args)
    if plot_path:
        save_plot(plot_path, summaries, f"{model} @ {args.base_url}")
        print(f"saved {plot_path}")
    return EXIT_OK if all(s.num_failed < s.num_requests for s in summaries) else EXIT_ERROR


async def _first_model(base_url: str, api_key: Optional[str], timeout_s: float) -> Tuple[Optional[str], str]:
    """The first model the endpoint lists, or None and what went wrong, said so that the user knows
    what to change (the key, the URL, or --model)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(url, headers=headers)
    except httpx.ConnectError as e:
        return None, f"cannot be reached ({e}): is the server running, and is --base-url right?"
    except httpx.HTTPError as e:
        return None, f"did not answer ({type(e).__name__}: {e})"
    if response.status_code in (401, 403):
        hint = "pass the server's key with --api-key" if not api_key else "the server refused the --api-key given"
        return None, f"answered {response.status_code}: {hint}"
    if response.status_code == 404:
        return None, "answered 404: --base-url should end with the API prefix, e.g. http://HOST:PORT/v1"
    if response.status_code != 200:
        return None, f"answered {response.status_code}: pass --model"
    try:
        data = response.json().get("data") or []
    except ValueError:
        return None, "answered something that is not JSON: pass --model"
    if not (data and isinstance(data[0], dict) and "id" in data[0]):
        return None, "lists no model: pass --model"
    return str(data[0]["id"]), ""
