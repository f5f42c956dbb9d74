"""Does a conversation template fit a tokenizer? `gen_config` asks before writing a directory.

A template names its model family's special tokens twice: as text (`<|eot_id|>` in its separators, roles
and stop strings) and as ids (`stop_token_ids`). With another family's tokenizer (`llama-3_1` on a Qwen
model) the text splits into ordinary pieces the model never saw as markers and the ids are unrelated
words, so answers neither follow the format nor stop. MLC writes such a directory silently; we still
write it (the template may be meant for a tokenizer edited later) but say precisely what does not fit.
"""

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

# Text that reads as a special token: <|...|> (Llama 3, ChatML, Phi), <start_of_turn> / <end_of_turn>
# (Gemma), <s> / </s>. Bracketed forms such as [INST] are ordinary text in every tokenizer that uses them.
SPECIAL_TEXT = re.compile(r"<\|[^<>|\s]+\|>|<(?:start|end)_of_turn>|</?s>")


def _template_texts(template: Dict[str, Any]) -> Iterator[str]:
    for key in ("system_template", "role_content_sep", "role_empty_sep"):
        if isinstance(template.get(key), str):
            yield template[key]
    for key in ("seps", "stop_str"):
        yield from (s for s in template.get(key) or [] if isinstance(s, str))
    yield from (s for s in (template.get("roles") or {}).values() if isinstance(s, str))


class Vocabulary:
    """Token texts and ids of a tokenizer.json (BPE / WordLevel / WordPiece dicts, Unigram lists) and
    its added tokens, which is where special tokens live."""

    def __init__(self, tokenizer: Dict[str, Any]) -> None:
        model = tokenizer.get("model") or {}
        vocab = model.get("vocab") or {}
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            vocab = {entry[0]: i for i, entry in enumerate(vocab)}
        self.ids: Dict[str, int] = dict(vocab)
        self.special: Dict[int, str] = {}
        for added in tokenizer.get("added_tokens") or []:
            self.ids[added["content"]] = added["id"]
            self.special[added["id"]] = added["content"]
        self.texts = {i: t for t, i in self.ids.items()}

    @staticmethod
    def load(path: Path) -> Optional["Vocabulary"]:
        if not path.exists():
            return None
        return Vocabulary(json.loads(path.read_text(encoding="utf-8")))


def template_mismatches(template: Dict[str, Any], vocab: Vocabulary, eos_token_ids: List[int]) -> List[str]:
    """What of `template` this tokenizer does not have, one sentence each; empty when it fits."""
    problems = []
    missing = sorted({m for text in _template_texts(template) for m in SPECIAL_TEXT.findall(text)} - set(vocab.ids))
    if missing:
        problems.append(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a token of this tokenizer")
    for token_id in template.get("stop_token_ids") or []:
        text = vocab.texts.get(token_id)
        if text is None:
            problems.append(f"stop token id {token_id} is not in this tokenizer's vocabulary")
        elif token_id not in vocab.special and token_id not in eos_token_ids:
            problems.append(f"stop token id {token_id} is the ordinary token {text!r} in this tokenizer")
    return problems
