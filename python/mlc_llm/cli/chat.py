"""`mlc_llm chat [MODEL]`: an interactive chat in the terminal.

Answers stream as they are generated and the conversation is kept between turns. Lines starting
with "/" are commands (see HELP). When stdin is not a terminal (a pipe or a file) every line is one
question and only the answers are printed, so the output can be consumed by another program.
Ctrl-C stops an answer being generated; Ctrl-C or Ctrl-D (end of input) at the prompt quits.
"""

import argparse
import sys
from typing import Any, Optional, TextIO

HELP = """Commands:
  /help                 show this help
  /exit                 quit (Ctrl-D does the same)
  /stats                prefill and decode speed (tokens/s) of the last answer
  /reset                start a new conversation
  /set key=value;...    change sampling: temperature, top_p, max_tokens, seed,
                        frequency_penalty, presence_penalty
Ctrl-C stops an answer being generated."""

PROMPT = ">>> "
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Chat with a model in the terminal.\n\n" + HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a GGUF file, an HF or MLC model directory, or HF://org/repo (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda" or "cuda:N" (default: auto)')
    parser.add_argument("--model-lib", default=None, help="accepted for compatibility; kernels are built in")
    parser.add_argument(
        "--overrides",
        default=None,
        help='engine settings as "key=value;key=value", e.g. "prefill_chunk_size=512;max_total_seq_length=4096"',
    )
    parser.add_argument("--max-tokens", type=int, default=None, help="longest answer in tokens")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy)")
    parser.add_argument("--verbose", action="store_true", help="show the engine's log on stderr")


def main(args: argparse.Namespace) -> int:
    # Imported here: loading the engine modules is not needed for `--help`.
    from ..examples.default_model import smollm2_path
    from ..protocol.errors import MLCError
    from .chat_session import ChatSession
    from .overrides import engine_config_from_overrides

    interactive = sys.stdin.isatty()
    try:
        model = args.model if args.model is not None else smollm2_path()
        engine = _load(model, args, engine_config_from_overrides(args.overrides))
    except (MLCError, FileNotFoundError) as err:
        print(f"mlc_llm chat: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    try:
        session = ChatSession(engine, model, {"max_tokens": args.max_tokens, "temperature": args.temperature})
        if interactive:
            _enable_line_editing()
            print(f"Chatting with {model} ({engine.info.get('device', args.device)}). Type /help for commands.")
        return _loop(session, interactive, sys.stdin, sys.stdout)
    except MLCError as err:  # the engine failed; a bad request is reported by _answer instead
        print(f"\nmlc_llm chat: {err}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        engine.terminate()


def _load(model: str, args: argparse.Namespace, engine_config: Any) -> Any:
    from ..serve.engine import MLCEngine

    # One conversation at a time: MLC's interactive mode (batch 1).
    return MLCEngine(
        model,
        device=args.device,
        model_lib=args.model_lib,
        mode="interactive",
        engine_config=engine_config,
        verbose=args.verbose,
    )


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  (input() gains history and cursor keys once it is loaded)
    except ImportError:  # not on every platform; plain input() still works
        pass


def _read(interactive: bool, stdin: TextIO) -> Optional[str]:
    """The next line, or None at end of input."""
    if interactive:
        try:
            return input(PROMPT)
        except EOFError:
            print()
            return None
    line = stdin.readline()
    return line.rstrip("\n") if line else None


def _loop(session: Any, interactive: bool, stdin: TextIO, out: TextIO) -> int:
    def write(text: str) -> None:
        out.write(text)
        out.flush()

    while True:
        try:
            line = _read(interactive, stdin)
        except KeyboardInterrupt:
            write("\n")
            return EXIT_OK
        if line is None:
            return EXIT_OK
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if not _command(session, text, write):
                return EXIT_OK
            continue
        _answer(session, text, write)


def _answer(session: Any, text: str, write: Any) -> None:
    from ..protocol.errors import BadRequestError

    try:
        session.ask(text, write)
    except KeyboardInterrupt:
        write("\n[stopped]\n")
        return
    except BadRequestError as err:  # e.g. the conversation outgrew the context window
        write(f"\nerror: {err}\n")
        return
    write("\n")


def _command(session: Any, text: str, write: Any) -> bool:
    """Runs a /command; False means quit."""
    name, _, rest = text.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/help":
        write(HELP + "\n")
    elif name == "/reset":
        session.reset()
        write("conversation reset\n")
    elif name == "/stats":
        stats = session.last_stats
        write((stats.describe() if stats is not None else "no statistics yet: ask something first") + "\n")
    elif name == "/set":
        try:
            changed = session.set_options(rest)
        except ValueError as err:
            write(f"error: {err}\n")
        else:
            write("set " + ", ".join(f"{k}={v}" for k, v in changed.items()) + "\n")
    else:
        write(f"unknown command {name}; /help lists the commands\n")
    return True
