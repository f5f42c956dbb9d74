"""The prompts a benchmark sends: synthetic ones of a set length, or the first turns of a
ShareGPT-format conversation file.

The client has no tokenizer, so lengths are approximate: a synthetic prompt is `input_len` common
English words (one token each in the BPE vocabularies of current models), and a ShareGPT answer of
n characters is taken to be about n / 4 tokens. Exact counts come back from the server in `usage`.
"""

import json
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

# Short, frequent words: each is a single token for Llama-, GPT- and Qwen-style tokenizers.
_WORDS = (
    "the of and to in is was for on that with as by at from his her it an are were be this which or "
    "had not but first one their also new after who they has have two its been other more time all "
    "some can would about into over than when only most three years many may these during then "
    "there city made while part both such early state under between same well long used where out "
    "high end later war each since name year world known four five group day work life before team "
    "game film house river music large small school family line home water light old"
).split()

CHARS_PER_TOKEN = 4
MIN_SHAREGPT_OUTPUT = 4
MAX_SHAREGPT_OUTPUT = 2048


@dataclass(frozen=True)
class Prompt:
    """One request: the user message and the number of tokens to ask for."""

    text: str
    max_tokens: int
    approx_input_tokens: int


def synthetic(num_prompts: int, input_len: int, output_len: int, seed: int = 0) -> List[Prompt]:
    """`num_prompts` prompts of `input_len` random words, each asking for `output_len` tokens."""
    if num_prompts < 1 or input_len < 1 or output_len < 1:
        raise ValueError("num_prompts, input_len and output_len must be positive")
    rng = random.Random(seed)
    prompts = []
    for _ in range(num_prompts):
        words = [rng.choice(_WORDS) for _ in range(input_len)]
        prompts.append(Prompt(" ".join(words), output_len, input_len))
    return prompts


def _turns(record: Dict[str, Any]) -> List[Dict[str, str]]:
    """The turns of one record as {"role", "content"}; accepts ShareGPT's {"from", "value"} and
    OpenAI's {"role", "content"} spellings."""
    raw = record.get("conversations") or record.get("conversation") or record.get("messages") or []
    turns = []
    for turn in raw:
        if not isinstance(turn, dict):
            continue
        role = str(turn.get("from", turn.get("role", "")))
        content = turn.get("value", turn.get("content"))
        if isinstance(content, str):
            turns.append({"role": "user" if role in ("human", "user") else "assistant", "content": content})
    return turns


def _first_exchange(record: Dict[str, Any]) -> Optional[Dict[str, str]]:
    turns = _turns(record)
    for question, answer in zip(turns, turns[1:]):
        if question["role"] == "user" and answer["role"] == "assistant" and question["content"].strip():
            return {"question": question["content"], "answer": answer["content"]}
    return None


def sharegpt(path: str, num_prompts: int, output_len: Optional[int] = None, seed: int = 0) -> List[Prompt]:
    """`num_prompts` first questions drawn (seeded) from a ShareGPT JSON file. Each asks for as many
    tokens as the recorded answer had (estimated), unless `output_len` fixes it."""
    if num_prompts < 1:
        raise ValueError("num_prompts must be positive")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    exchanges = [e for e in (_first_exchange(r) for r in data if isinstance(r, dict)) if e is not None]
    if not exchanges:
        raise ValueError(f"{path}: no conversation with a user turn followed by an answer")
    rng = random.Random(seed)
    rng.shuffle(exchanges)
    prompts = []
    for i in range(num_prompts):  # a small file is reused round-robin
        exchange = exchanges[i % len(exchanges)]
        estimated = len(exchange["answer"]) // CHARS_PER_TOKEN
        max_tokens = output_len or min(max(estimated, MIN_SHAREGPT_OUTPUT), MAX_SHAREGPT_OUTPUT)
        prompts.append(Prompt(exchange["question"], max_tokens, len(exchange["question"]) // CHARS_PER_TOKEN))
    return prompts
