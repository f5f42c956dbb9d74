"""gpt-oss's Harmony format, split into thinking, answer and tool calls.

gpt-oss answers in messages, each a header and a body between special tokens:

    <|channel|>analysis<|message|>I should look it up.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>
    <|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>

(the chat template already wrote the first `<|start|>assistant`). The `analysis` channel is the thinking
(`reasoning_content`), `final` the answer, and a `commentary` message addressed `to=functions.NAME` a tool
call whose body is the JSON arguments; commentary without a recipient is a preamble shown as content.

The markers are special tokens, which the detokenizer leaves out of the text, so the parser follows the
token ids of each delta: a special token's delta carries no text, and the text of the others belongs to the
message or header they are in. A tool call is handed on as a Hermes block (`<tool_call>{...}</tool_call>`)
in the content, where the tool-call parser (tool_calls.py) turns it into `tool_calls` like any other.
"""

import json
import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from .tool_calls import HERMES_BEGIN, HERMES_END

_RECIPIENT = re.compile(r"to=([^\s<]+)")


@dataclass(frozen=True)
class HarmonyTokens:
    """The ids of Harmony's markers in one tokenizer."""

    start: int
    channel: int
    message: int
    end: int
    return_: int
    call: int
    constrain: int

    @staticmethod
    def of(tokenize: Callable[[str], List[int]]) -> Optional["HarmonyTokens"]:
        """The markers' ids if each is one token of its own (gpt-oss's o200k_harmony), else None."""
        names = ("start", "channel", "message", "end", "return", "call", "constrain")
        ids = [tokenize(f"<|{name}|>") for name in names]
        if any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != len(names):
            return None  # a word-level tokenizer maps every unknown word to one and the same id
        return HarmonyTokens(*(i[0] for i in ids))


class HarmonyStream:
    """Per-choice state over the deltas of one answer, with ReasoningStream's interface: `push`
    returns the (thinking, content) text that may be sent now."""

    def __init__(self, tokens: HarmonyTokens) -> None:
        self._t = tokens
        self._specials = {tokens.start, tokens.channel, tokens.message, tokens.end, tokens.return_,
                          tokens.call, tokens.constrain}
        # The prompt ends with "<|start|>assistant": generation starts in a header.
        self._in_header = True
        self._header: List[str] = []
        self._sink: Optional[str] = None  # "reasoning", "content" or "call" while in a message body
        self._call_name = ""
        self._call_args: List[str] = []
        self.saw_reasoning = False

    @property
    def in_reasoning(self) -> bool:
        return self._sink == "reasoning"

    def push(self, text: str, token_ids: Sequence[int] = ()) -> Tuple[str, str]:
        reasoning: List[str] = []
        content: List[str] = []
        # Text first: a special token has none, so a delta's text comes from the tokens before its
        # first marker (one token per delta outside speculative decoding).
        self._take(text, reasoning, content)
        for token in token_ids:
            if token in self._specials:
                content.append(self._marker(token))
        return "".join(reasoning), "".join(content)

    def finish(self) -> Tuple[str, str]:
        """At the end of the choice: a call whose closing marker the engine kept as its stop token."""
        return "", self._end_message()

    def _take(self, text: str, reasoning: List[str], content: List[str]) -> None:
        if not text:
            return
        if self._in_header or self._sink is None:
            self._header.append(text)
        elif self._sink == "reasoning":
            reasoning.append(text)
        elif self._sink == "call":
            self._call_args.append(text)
        else:
            content.append(text)

    def _marker(self, token: int) -> str:
        """Follows one marker; returns content it completes (a finished tool call)."""
        t = self._t
        if token == t.message:
            self._open_message()
        elif token in (t.channel, t.constrain):
            self._in_header = True
            self._header.append(" ")  # keeps "commentary" apart from "json" after <|constrain|>
            if token == t.channel:
                self._header.append("<|channel|>")
        elif token in (t.end, t.call, t.return_, t.start):
            done = self._end_message()
            self._in_header = token == t.start
            self._header = []
            return done
        return ""

    def _open_message(self) -> None:
        header = "".join(self._header)
        self._header = []
        self._in_header = False
        channel = header.rsplit("<|channel|>", 1)[-1].split()
        name = channel[0] if channel else ""
        recipient = _RECIPIENT.search(header)
        if recipient is not None and recipient.group(1).startswith("functions."):
            self._sink = "call"
            self._call_name = recipient.group(1)[len("functions.") :]
            self._call_args = []
        elif name == "analysis":
            self._sink = "reasoning"
            self.saw_reasoning = True
        else:
            self._sink = "content"  # final, or a commentary preamble

    def _end_message(self) -> str:
        sink, self._sink = self._sink, None
        if sink != "call":
            return ""
        arguments = "".join(self._call_args).strip() or "{}"
        # The JSON is written around the model's own arguments text, which the tool-call parser checks.
        return f'{HERMES_BEGIN}\n{{"name": {json.dumps(self._call_name)}, "arguments": {arguments}}}\n{HERMES_END}'
