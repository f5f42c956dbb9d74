"""Sentence embeddings of a decoder model (MLC's AsyncEmbeddingEngine API) on the tiny random Qwen3 of
tests/fixtures/models/qwen3, checked against HF transformers without torch: its reference logits at the
last prompt token are `h @ E^T` (tied embeddings), so transformers' final hidden state `h` is their least-
squares solution over the embedding matrix `E`, which the engine's last-token embedding must match."""

import json
import struct
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from mlc_llm import BadRequestError
from mlc_llm.serve.embedding_engine import AsyncEmbeddingEngine

QWEN3 = Path(__file__).parent / "fixtures" / "models" / "qwen3"


def read_safetensor(path: Path, name: str) -> np.ndarray:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header: Dict[str, Any] = json.loads(f.read(size))
        entry = header[name]
        assert entry["dtype"] == "F32", entry
        begin, end = entry["data_offsets"]
        f.seek(8 + size + begin)
        return np.frombuffer(f.read(end - begin), dtype="<f4").reshape(entry["shape"])


@pytest.fixture(scope="module")
def embedder() -> Iterator[AsyncEmbeddingEngine]:
    engine = AsyncEmbeddingEngine(str(QWEN3), device="cpu", max_batch_tokens=64)
    yield engine
    engine.terminate()


@pytest.fixture(scope="module")
def reference() -> Dict[str, Any]:
    ref = json.loads((QWEN3 / "reference.json").read_text())
    logits = np.fromfile(QWEN3 / ref["logits_file"], dtype="<f4").reshape(ref["logits_shape"])
    embed = read_safetensor(QWEN3 / "model.safetensors", "model.embed_tokens.weight")  # [vocab, hidden]
    # Row 0 of each prompt: the logits at its last token, h @ E^T.
    hidden = np.linalg.lstsq(embed.astype(np.float64), logits[:, 0, :].T.astype(np.float64), rcond=None)[0].T
    return {"prompts": ref["prompts"], "hidden": hidden, "logits": logits[:, 0, :], "embed": embed}


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_last_token_embedding_matches_transformers(embedder: AsyncEmbeddingEngine, reference: Dict[str, Any]) -> None:
    raw, tokens = embedder.embed(reference["prompts"], normalize=False)
    assert tokens == sum(len(p) for p in reference["prompts"])
    for ours, theirs, logits in zip(raw, reference["hidden"], reference["logits"]):
        assert cosine(ours, theirs) >= 0.99999
        assert np.allclose(ours, theirs, rtol=1e-3, atol=1e-3)
        # The same through the model's head: transformers' own numbers, to f32 precision.
        assert np.abs(np.asarray(ours) @ reference["embed"].T - logits).max() < 1e-3


def test_unit_norm_and_batch_equals_one_by_one(embedder: AsyncEmbeddingEngine, reference: Dict[str, Any]) -> None:
    prompts: List[List[int]] = reference["prompts"]
    together, _ = embedder.embed(prompts)
    for prompt, vector in zip(prompts, together):
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
        alone, _ = embedder.embed([prompt])
        assert np.allclose(alone[0], vector, atol=1e-6)
    # More tokens than one step holds: split into steps, same vectors.
    many, _ = embedder.embed(prompts * 3)
    assert np.allclose(np.array(many), np.array(together * 3), atol=1e-6)


def test_strings_pooling_and_bad_inputs(embedder: AsyncEmbeddingEngine) -> None:
    import asyncio

    vectors, tokens = asyncio.run(embedder.async_embed(["t5 t6", "t7"]))
    assert len(vectors) == 2 and len(vectors[0]) == embedder.hidden_size and tokens >= 3
    mean = AsyncEmbeddingEngine(str(QWEN3), device="cpu", pooling_strategy="mean", max_batch_tokens=64)
    assert cosine(mean.embed([[5, 6, 7]])[0][0], embedder.embed([[5, 6, 7]])[0][0]) < 0.9999
    mean.terminate()
    with pytest.raises(BadRequestError):
        embedder.embed([[]])
    with pytest.raises(BadRequestError):
        embedder.embed([[10**6]])
    with pytest.raises(BadRequestError):
        AsyncEmbeddingEngine(str(QWEN3), device="cpu", pooling_strategy="max")


# ------------------------------------------------------------------------------------ /v1/embeddings


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from server_process import ServerProcess

    llama = Path(__file__).parent / "fixtures" / "models" / "llama"
    proc = ServerProcess(str(llama), "--embedding-model", str(QWEN3), "--no-access-log")
    yield proc
    proc.close()


def test_embeddings_through_the_openai_sdk(server: Any, embedder: AsyncEmbeddingEngine) -> None:
    import openai

    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0) as client:
        texts = ["t5 t6 t7", "t8"]
        # The SDK asks for base64 unless told otherwise, and decodes it itself.
        default = client.embeddings.create(model="qwen3", input=texts)
        floats = client.embeddings.create(model=str(QWEN3), input=texts, encoding_format="float")
        assert [d.index for d in default.data] == [0, 1] and default.model == str(QWEN3)
        assert np.allclose([d.embedding for d in default.data], [d.embedding for d in floats.data], atol=1e-7)
        assert np.allclose([d.embedding for d in floats.data], embedder.embed(texts)[0], atol=1e-6)
        assert floats.usage.prompt_tokens == floats.usage.total_tokens == embedder.embed(texts)[1]

        ids = client.embeddings.create(model="qwen3", input=[5, 6, 7], encoding_format="float")
        assert np.allclose(ids.data[0].embedding, embedder.embed([[5, 6, 7]])[0][0], atol=1e-6)
        lists = client.embeddings.create(model="qwen3", input=[[5, 6, 7], [8]], encoding_format="float")
        assert len(lists.data) == 2

        short = client.embeddings.create(model="qwen3", input="t5 t6", dimensions=16, encoding_format="float")
        full = embedder.embed(["t5 t6"])[0][0]
        assert len(short.data[0].embedding) == 16 and abs(np.linalg.norm(short.data[0].embedding) - 1) < 1e-5
        assert cosine(short.data[0].embedding, full[:16]) > 0.99999

        with pytest.raises(openai.BadRequestError) as too_wide:
            client.embeddings.create(model="qwen3", input="t5", dimensions=65)
        assert too_wide.value.param == "dimensions"
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="text-embedding-3-small", input="t5")
        with pytest.raises(openai.BadRequestError) as unknown:
            client.embeddings.create(model="qwen3", input="t5", extra_body={"truncate": True})
        assert unknown.value.param == "truncate"
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="qwen3", input=[])


# --------------------------------------------------------------------------------- BERT encoders

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


def random_bert(rng: np.random.Generator) -> Dict[str, np.ndarray]:
    c = BERT_CONFIG
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
    t["pooler.dense.weight"], t["pooler.dense.bias"] = w(h, h), w(h)  # present in checkpoints, unused
    return t


def bert_reference(t: Dict[str, np.ndarray], ids: List[int]) -> np.ndarray:
    """HF BertModel's last hidden state, in float64 numpy (erf GELU, post-LayerNorm blocks)."""
    import math

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


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    tensors = random_bert(np.random.default_rng(7))
    directory = tmp_path_factory.mktemp("bert") / "tiny-bert"
    write_bert(directory, tensors)
    return {"dir": directory, "tensors": tensors}


def test_bert_cls_and_mean_pooling_match_the_reference(bert: Dict[str, Any]) -> None:
    engine = AsyncEmbeddingEngine(str(bert["dir"]), device="cpu")
    assert engine.model_type == "encoder" and engine.pooling_strategy == "cls"
    texts = ["The cat sat on the mat.", "A big red dog ran", "cats"]
    ids = engine.tokenize(texts)
    vocab = {tok: i for i, tok in enumerate(BERT_VOCAB)}
    assert ids[0] == [2] + [vocab[w] for w in ["the", "cat", "sat", "on", "the", "mat", "."]] + [3]
    assert ids[2] == [2, vocab["cat"], vocab["##s"], 3]  # WordPiece, lower-cased
    vectors, tokens = engine.embed(texts)
    assert tokens == sum(len(i) for i in ids)
    mean = AsyncEmbeddingEngine(str(bert["dir"]), device="cpu", pooling_strategy="mean")
    for text_ids, cls_vec, mean_vec in zip(ids, vectors, mean.embed(texts)[0]):
        hidden = bert_reference(bert["tensors"], text_ids)
        assert cosine(cls_vec, hidden[0]) >= 0.99999 and abs(np.linalg.norm(cls_vec) - 1) < 1e-5
        assert cosine(mean_vec, hidden.mean(0)) >= 0.99999
    # One by one equals the batch.
    assert np.allclose(engine.embed(texts[1:2])[0][0], vectors[1], atol=1e-6)
    engine.terminate()
    mean.terminate()
