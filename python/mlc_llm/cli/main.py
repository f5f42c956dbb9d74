"""The `mlc_llm` command: one argparse subcommand per module `mlc_llm.cli.<name>`.

Each subcommand module exposes `register(subparsers)` (adds its parser) and `main(args) -> int`.
Modules are imported only when their subcommand runs: `serve` pulls in the web stack and `chat` the
engine, and neither should slow down `mlc_llm --help` or each other.
"""

import argparse
import importlib
import sys
from typing import Dict, List, Optional, Sequence, Tuple

# name -> (module, one-line help shown by `mlc_llm --help`)
SUBCOMMANDS: Dict[str, Tuple[str, str]] = {
    "chat": ("mlc_llm.cli.chat", "chat with a model in the terminal"),
    "serve": ("mlc_llm.cli.serve", "serve a model behind an OpenAI-compatible REST API"),
    "bench": ("mlc_llm.cli.bench", "benchmark an OpenAI-compatible endpoint (throughput, TTFT, ITL, latency)"),
    "convert_weight": ("mlc_llm.cli.convert_weight", "convert HF weights to an MLC tensor cache (q0f16, q4f16_1, ...)"),
    "gen_config": ("mlc_llm.cli.gen_config", "write mlc-chat-config.json and copy the tokenizer"),
}

# Exit status of a command line that cannot run (argparse uses the same for usage errors).
EXIT_USAGE = 2


def _top_parser() -> Tuple[argparse.ArgumentParser, "argparse._SubParsersAction[argparse.ArgumentParser]"]:
    parser = argparse.ArgumentParser(
        prog="mlc_llm",
        description="MLC LLM command line: chat with, serve and benchmark language models, and convert weights.",
    )
    parser.add_argument("--version", action="version", version=f"mlc_llm {_version()}")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", title="subcommands")
    return parser, subparsers


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mlc_llm")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


def _chosen(argv: Sequence[str]) -> Optional[str]:
    """The subcommand named on the command line; the top-level parser has no option that takes a
    value, so it is the first argument that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = _top_parser()
    chosen = _chosen(argv)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != chosen:
            # A placeholder keeps `--help` complete without importing the module.
            subparsers.add_parser(name, help=help_text, add_help=False)
            continue
        try:
            importlib.import_module(module_name).register(subparsers)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                reason = f"this subcommand is not available in this build ({module_name} is missing)"
            else:
                reason = f"it needs the Python package {err.name!r}, which is not installed"
            print(f"mlc_llm {name}: {reason}", file=sys.stderr)
            return EXIT_USAGE
    args = parser.parse_args(argv)
    if args.subcommand is None:
        parser.print_help()
        return EXIT_USAGE
    module = importlib.import_module(SUBCOMMANDS[args.subcommand][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
