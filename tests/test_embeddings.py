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

from bert_model import BERT_VOCAB, bert_reference, random_bert, write_bert
from mlc_llm import BadRequestError
from mlc_llm.serve.embedding_engine import AsyncEmbeddingEngine

QWEN3 = Path(__file__).parent / "fixtures" / "models" / "qwen3"
HF_BERT = Path(__file__).parent / "fixtures" / "embeddings" / "bert_transformers.json"


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
    # HF transformers' BertModel on the same weights (tests/fixtures/gen_bert_reference.py), and the float64
    # numpy forward pass as a second, torch-free reference.
    hf = json.loads(HF_BERT.read_text())
    assert hf["texts"] == texts and hf["ids"] == ids  # tokenizers' encoding equals ours
    for text_ids, cls_vec, mean_vec, hf_cls, hf_mean in zip(ids, vectors, mean.embed(texts)[0], hf["cls"], hf["mean"]):
        hidden = bert_reference(bert["tensors"], text_ids)
        assert cosine(cls_vec, hidden[0]) >= 0.99999 and abs(np.linalg.norm(cls_vec) - 1) < 1e-5
        assert cosine(mean_vec, hidden.mean(0)) >= 0.99999
        assert cosine(cls_vec, hf_cls) >= 0.99999 and cosine(mean_vec, hf_mean) >= 0.99999
    # One by one equals the batch.
    assert np.allclose(engine.embed(texts[1:2])[0][0], vectors[1], atol=1e-6)
    engine.terminate()
    mean.terminate()
