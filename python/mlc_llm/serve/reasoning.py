"""Reasoning models' thinking, split from their answer: the `<think>...</think>` convention of Qwen3,
QwQ and the DeepSeek-R1 distills.

The thinking goes to `reasoning_content` (vLLM's name, which LangChain, LiteLLM and Open WebUI read)
and to `reasoning` (vLLM's newer name) beside `content`; a tool call after the thinking is parsed from
the answer part only. The parser runs on detokenized text, per choice, and never looks back more than
the length of a tag, so streaming costs the same as passing text through.

Where the thinking starts: a model opens `<think>` itself (Qwen3), or the chat template already wrote
it at the end of the prompt (DeepSeek-R1's and Qwen3.5's templates), so the state at the start of the
answer is read off the rendered prompt (`starts_in_reasoning`). Qwen3 with `chat_template_kwargs:
{"enable_thinking": false}` prefills an empty, closed block: its answer is all content.

History: the thinking of earlier assistant turns is removed before the template sees them, as MLC's
`strip_reasoning_in_history` does (the models are trained without it, and echoing it makes the next
turn drift); `reasoning_content` sent back by a client is dropped for the same reason.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ReasoningSplit:
    """One choice's output: the thinking (None when there was none) and the answer."""

    reasoning: Optional[str]
    content: str


def knows_think_tags(tokenize: Callable[[str], List[int]], detokenize: Callable[[List[int]], str]) -> bool:
    """Whether the tokenizer has `<think>` and `</think>` as tokens of their own: the mark of a model
    trained to think in them (Qwen3, QwQ, the DeepSeek-R1 distills), where other models would spell
    them out of pieces and never produce them on their own. The id must spell the tag back: a
    word-level tokenizer maps any unknown word to one id as well."""
    for tag in (THINK_OPEN, THINK_CLOSE):
        ids = tokenize(tag)
        if len(ids) != 1 or detokenize(ids) != tag:
            return False
    return True


def strip_history(messages: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The template's messages with the thinking of earlier assistant turns removed."""
    return [
        {**m, "content": strip_reasoning(m["content"])}
        if m.get("role") == "assistant" and isinstance(m.get("content"), str)
        else m
        for m in messages
    ]


def starts_in_reasoning(prompt: str) -> bool:
    """Whether the rendered prompt ends by opening a `<think>` block (the generation prompt of
    DeepSeek-R1's and Qwen3.5's templates), so generation starts inside it. Only the end counts: a
    user may well write "<think>" in a message."""
    return prompt.rstrip().endswith(THINK_OPEN)


def split_reasoning(text: str, in_reasoning: bool) -> ReasoningSplit:
    """The whole output of one choice split into thinking and answer. Without a closing tag, output
    that started inside the thinking is all thinking (it was cut off by max_tokens)."""
    stream = ReasoningStream(in_reasoning)
    reasoning, content = stream.push(text)
    more_reasoning, more_content = stream.finish()
    reasoning += more_reasoning
    content += more_content
    return ReasoningSplit(reasoning if stream.saw_reasoning else None, content)


def strip_reasoning(content: str) -> str:
    """An earlier assistant answer without its thinking: everything up to the last `</think>` goes
    (the opening tag may be missing: the template wrote it), and the whitespace after it."""
    cut = content.rfind(THINK_CLOSE)
    return content if cut < 0 else content[cut + len(THINK_CLOSE) :].lstrip()


class ReasoningStream:
    """Per-choice streaming state. `push` returns the (thinking, answer) text that may be sent now;
    text that might be the start of a tag is held back until the next piece tells."""

    def __init__(self, in_reasoning: bool) -> None:
        self._in_reasoning = in_reasoning
        # Before any answer text: a model that opens <think> itself does so first.
        self._at_start = not in_reasoning
        # Right after a tag: the newlines the convention puts there belong to neither part.
        self._after_tag = in_reasoning
        self._held = ""
        self.saw_reasoning = in_reasoning

    @property
    def in_reasoning(self) -> bool:
        return self._in_reasoning

    def push(self, text: str, token_ids: Sequence[int] = ()) -> Tuple[str, str]:
        """`token_ids` (unused: the tags are text) keeps the interface of harmony.HarmonyStream."""
        reasoning: List[str] = []
        content: List[str] = []
        rest = self._held + text
        self._held = ""
        while rest:
            if self._after_tag:
                rest = rest.lstrip("\n")
                if not rest:
                    break
                self._after_tag = False
            if self._at_start:
                stripped = rest.lstrip()
                if len(stripped) < len(THINK_OPEN) and THINK_OPEN.startswith(stripped):
                    self._held = rest  # could still become "<think>"
                    break
                self._at_start = False
                if stripped.startswith(THINK_OPEN):
                    self._in_reasoning = self.saw_reasoning = self._after_tag = True
                    rest = stripped[len(THINK_OPEN) :]
            elif self._in_reasoning:
                index = rest.find(THINK_CLOSE)
                if index < 0:
                    keep = _partial_suffix(rest, THINK_CLOSE)
                    reasoning.append(rest[: len(rest) - keep])
                    self._held = rest[len(rest) - keep :]
                    break
                reasoning.append(rest[:index])
                self._in_reasoning = False
                self._after_tag = True
                rest = rest[index + len(THINK_CLOSE) :]
            else:
                content.append(rest)
                break
        return "".join(reasoning), "".join(content)

    def finish(self) -> Tuple[str, str]:
        """At the end of the choice: the held-back text, as thinking or answer."""
        held, self._held = self._held, ""
        return (held, "") if self._in_reasoning else ("", held)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
