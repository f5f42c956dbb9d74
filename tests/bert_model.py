"""A tiny random BERT (HF BertModel's layout and config) written as an HF directory, and its forward pass in
float64 numpy: shared by tests/test_embeddings.py and tests/fixtures/gen_bert_reference.py (which runs HF
transformers on the same directory). No mlc_llm import: the generator runs in the reference venv."""

import json
import math
import struct
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran",
              "##s", "big", "small", "red", "blue", ".", ","]
BERT_CONFIG = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(BERT_VOCAB), "hidden_size": 32,
               "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
               "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12}


def write_safetensors(path: Path, tensors: Dict[str, np.ndarray]) -> None:
    header: Dict[str, Any] = {}
    offset = 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for t in tensors.values():
            f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())


def random_bert(rng: np.random.Generator, c: Dict[str, Any] = BERT_CONFIG, pooler: bool = True) -> Dict[str, np.ndarray]:
    """BertModel's tensors for config `c` (any BERT-family layout: XLM-R's is the same), std 0.2 so that every
    input, positions included, moves the output well past float32 noise."""
    h, i = c["hidden_size"], c["intermediate_size"]

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    t = {"embeddings.word_embeddings.weight": w(c["vocab_size"], h),
         "embeddings.position_embeddings.weight": w(c["max_position_embeddings"], h),
         "embeddings.token_type_embeddings.weight": w(c["type_vocab_size"], h),
         "embeddings.LayerNorm.weight": 1 + w(h), "embeddings.LayerNorm.bias": w(h)}
    for n in range(c["num_hidden_layers"]):
        p = f"encoder.layer.{n}"
        for name, (o, k) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                             "attention.self.value": (h, h), "attention.output.dense": (h, h),
                             "intermediate.dense": (i, h), "output.dense": (h, i)}.items():
            t[f"{p}.{name}.weight"], t[f"{p}.{name}.bias"] = w(o, k), w(o)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[f"{p}.{name}.weight"], t[f"{p}.{name}.bias"] = 1 + w(h), w(h)
    if pooler:
        t["pooler.dense.weight"], t["pooler.dense.bias"] = w(h, h), w(h)  # present in checkpoints, unused
    return t


def bert_reference(t: Dict[str, np.ndarray], ids: List[int]) -> np.ndarray:
    """HF BertModel's last hidden state, in float64 numpy (erf GELU, post-LayerNorm blocks)."""

    c = BERT_CONFIG
    heads, eps = c["num_attention_heads"], c["layer_norm_eps"]
    t64 = {k: v.astype(np.float64) for k, v in t.items()}

    def ln(x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t64[f"{name}.weight"] + t64[f"{name}.bias"]

    def lin(x: np.ndarray, name: str) -> np.ndarray:
        return x @ t64[f"{name}.weight"].T + t64[f"{name}.bias"]

    n = len(ids)
    x = t64["embeddings.word_embeddings.weight"][ids] + t64["embeddings.position_embeddings.weight"][:n]
    x = ln(x + t64["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    erf = np.vectorize(math.erf)
    for layer in range(c["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"
        q, k, v = (lin(x, f"{p}.attention.self.{m}").reshape(n, heads, -1).transpose(1, 0, 2) for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, -1)
        x = ln(lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        inter = lin(x, f"{p}.intermediate.dense")
        inter = 0.5 * inter * (1 + erf(inter / math.sqrt(2)))
        x = ln(lin(inter, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    return x


def write_bert(directory: Path, tensors: Dict[str, np.ndarray]) -> None:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(BERT_CONFIG))
    write_safetensors(directory / "model.safetensors", tensors)
    specials = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                 "special": True} for i, tok in enumerate(BERT_VOCAB[:5])]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                           "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                                              "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {tok: i for i, tok in enumerate(BERT_VOCAB)}},
    }
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    (directory / "tokenizer_config.json").write_text(json.dumps({"cls_token": "[CLS]", "sep_token": "[SEP]"}))


