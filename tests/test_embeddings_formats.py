"""Embeddings from every format the embedding engine reads, checked against HF transformers' float32 vectors
(tests/fixtures/gen_embedding_formats.py; llama.cpp agreed with them on the GGUF files there, to cosine
>= 0.9999996): a BERT GGUF (llama.cpp's `bert`, WordPiece vocabulary), an XLM-RoBERTa from safetensors and from
GGUF (`bert` with a Unigram vocabulary), and a Qwen3 GGUF used as an embedding model (last-token pooling).
Also: unit norm, many inputs in one engine step equal to one by one, and /v1/embeddings serving a GGUF encoder."""

import base64
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from bert_model import random_bert, write_bert
from mlc_llm.serve.embedding_engine import AsyncEmbeddingEngine

FIXTURES = Path(__file__).parent / "fixtures" / "embeddings"
REF: Dict[str, Any] = json.loads((FIXTURES / "formats_transformers.json").read_text())
BERT_GGUF = FIXTURES / "bert-tiny.gguf"
XLMR_DIR = FIXTURES / "xlmr-tiny"
XLMR_GGUF = FIXTURES / "xlmr-tiny.gguf"
QWEN3_GGUF = FIXTURES / "qwen3-embedding-tiny.gguf"
QWEN3_DIR = Path(__file__).parent / "fixtures" / "models" / "qwen3"
BOUND = 0.99999


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def min_cosine(ours: List[List[float]], theirs: List[List[float]]) -> float:
    assert len(ours) == len(theirs)
    return min(cosine(a, b) for a, b in zip(ours, theirs))


def max_abs_diff(ours: List[List[float]], theirs: List[List[float]]) -> float:
    """Beside the cosine: a near-miss such as the tanh GELU for the erf one (llama.cpp's graph) keeps the cosine
    of these tiny models above 0.9999999 but moves components by ~4e-4; the engine is within ~1e-6."""
    return float(np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)).max())


@pytest.fixture(scope="module")
def engines() -> Iterator[Dict[str, AsyncEmbeddingEngine]]:
    made = {
        "bert_gguf": AsyncEmbeddingEngine(str(BERT_GGUF), device="cpu"),
        "xlmr_dir": AsyncEmbeddingEngine(str(XLMR_DIR), device="cpu"),
        "xlmr_gguf": AsyncEmbeddingEngine(str(XLMR_GGUF), device="cpu"),
        "qwen3_gguf": AsyncEmbeddingEngine(str(QWEN3_GGUF), device="cpu", max_batch_tokens=512),
    }
    yield made
    for engine in made.values():
        engine.terminate()


def test_bert_gguf_matches_transformers(engines: Dict[str, AsyncEmbeddingEngine], tmp_path: Path) -> None:
    ref, engine = REF["bert_gguf"], engines["bert_gguf"]
    # bert.pooling_type says CLS (a BGE-style model); the WordPiece vocabulary respelled by llama.cpp's
    # converter encodes the texts as HF tokenizers does, [CLS] and [SEP] included.
    assert engine.model_type == "encoder" and engine.pooling_strategy == "cls"
    assert engine.tokenize(ref["texts"]) == ref["ids"]
    vectors, tokens = engine.embed(ref["texts"])
    assert tokens == sum(len(i) for i in ref["ids"])
    assert min_cosine(vectors, ref["cls"]) >= BOUND
    assert max_abs_diff(engine.embed(ref["texts"], normalize=False)[0], ref["cls"]) < 2e-5
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)
    mean = AsyncEmbeddingEngine(str(BERT_GGUF), device="cpu", pooling_strategy="mean")
    assert min_cosine(mean.embed(ref["texts"])[0], ref["mean"]) >= BOUND
    mean.terminate()
    # The same weights from safetensors (tests/bert_model.py, seed 7) give the same vectors.
    write_bert(tmp_path / "bert", random_bert(np.random.default_rng(7)))
    hf = AsyncEmbeddingEngine(str(tmp_path / "bert"), device="cpu")
    assert np.allclose(hf.embed(ref["texts"])[0], vectors, atol=1e-5)
    hf.terminate()
    # A directory holding just the GGUF loads as the file does.
    (tmp_path / "gguf-dir").mkdir()
    shutil.copy(BERT_GGUF, tmp_path / "gguf-dir")
    in_dir = AsyncEmbeddingEngine(str(tmp_path / "gguf-dir"), device="cpu")
    assert in_dir.model_type == "encoder" and np.allclose(in_dir.embed(ref["texts"])[0], vectors, atol=1e-7)
    in_dir.terminate()


@pytest.mark.parametrize("name", ["xlmr_dir", "xlmr_gguf"])
def test_xlm_roberta_matches_transformers(engines: Dict[str, AsyncEmbeddingEngine], name: str) -> None:
    ref, engine = REF["xlmr"], engines[name]
    # Mean pooling from sentence-transformers' 1_Pooling (safetensors) or bert.pooling_type (GGUF); <s> ... </s>
    # around the input; the GGUF's Unigram vocabulary encodes as HF tokenizers does.
    assert engine.model_type == "encoder" and engine.pooling_strategy == "mean"
    assert engine.tokenize(ref["texts"]) == ref["ids"]
    vectors, _ = engine.embed(ref["texts"])
    assert min_cosine(vectors, ref["mean"]) >= BOUND
    assert max_abs_diff(engine.embed(ref["texts"], normalize=False)[0], ref["mean"]) < 2e-5
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)
    cls = AsyncEmbeddingEngine(str(XLMR_DIR if name == "xlmr_dir" else XLMR_GGUF), device="cpu", pooling_strategy="cls")
    assert min_cosine(cls.embed(ref["texts"])[0], ref["cls"]) >= BOUND
    cls.terminate()


def test_roberta_positions_must_start_after_padding(tmp_path: Path) -> None:
    """The fixture sees RoBERTa's position offset: the same weights read as a BERT (position ids from 0 instead
    of pad_token_id + 1) miss transformers' vectors by far more than the bound allows."""
    shutil.copytree(XLMR_DIR, tmp_path / "as-bert")
    config = json.loads((tmp_path / "as-bert" / "config.json").read_text())
    (tmp_path / "as-bert" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    engine = AsyncEmbeddingEngine(str(tmp_path / "as-bert"), device="cpu")
    assert engine.tokenize(REF["xlmr"]["texts"]) == REF["xlmr"]["ids"]
    assert min_cosine(engine.embed(REF["xlmr"]["texts"])[0], REF["xlmr"]["mean"]) < 0.99
    engine.terminate()


@pytest.mark.parametrize(
    "edit, named",
    [
        (("config.json", {"position_embedding_type": "relative_key"}), "position_embedding_type"),
        (("config.json", {"pad_token_id": None}), "pad_token_id"),
        (("config.json", {"hidden_act": "relu"}), "hidden_act"),
        (("1_Pooling/config.json", {"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}), "pooling_mode_max_tokens"),
    ],
)
def test_settings_that_change_the_math_are_refused_by_name(tmp_path: Path, edit: Any, named: str) -> None:
    from mlc_llm.protocol.errors import ModelLoadError

    shutil.copytree(XLMR_DIR, tmp_path / "m")
    path = tmp_path / "m" / edit[0]
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit[1]}))
    with pytest.raises(ModelLoadError, match=named):
        AsyncEmbeddingEngine(str(tmp_path / "m"), device="cpu")


def test_qwen3_gguf_last_token_matches_transformers(engines: Dict[str, AsyncEmbeddingEngine]) -> None:
    ref, engine = REF["qwen3_gguf"], engines["qwen3_gguf"]
    assert engine.model_type == "decoder" and engine.pooling_strategy == "last"
    raw, tokens = engine.embed(ref["ids"], normalize=False)
    assert tokens == sum(len(i) for i in ref["ids"])
    assert min_cosine(raw, ref["last"]) >= BOUND
    assert np.allclose(raw, ref["last"], atol=1e-4)
    vectors, _ = engine.embed(ref["ids"])
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)
    # The safetensors checkpoint the GGUF was written from gives the same vectors.
    hf = AsyncEmbeddingEngine(str(QWEN3_DIR), device="cpu", max_batch_tokens=256)
    assert np.allclose(hf.embed(ref["ids"])[0], vectors, atol=1e-5)
    hf.terminate()
    # Strings end with <|endoftext|>, the token Qwen3-Embedding summarises the input in.
    assert engine.tokenize(["hello"])[0][-1] == ref["ids"][0][-1]


@pytest.mark.parametrize("name", ["bert_gguf", "xlmr_dir", "xlmr_gguf", "qwen3_gguf"])
def test_many_inputs_run_in_one_step_and_equal_one_by_one(engines: Dict[str, AsyncEmbeddingEngine], name: str) -> None:
    engine = engines[name]
    key = {"bert_gguf": "bert_gguf", "xlmr_dir": "xlmr", "xlmr_gguf": "xlmr", "qwen3_gguf": "qwen3_gguf"}[name]
    inputs: List[Any] = REF[key]["texts"] or REF[key]["ids"]
    inputs = (inputs * 3)[:8]  # 8 inputs of different lengths
    before = engine.steps
    together, _ = engine.embed(inputs)
    assert engine.steps == before + 1, "8 short inputs should run as one forward pass"
    for item, vector in zip(inputs, together):
        alone, _ = engine.embed([item])
        assert np.allclose(alone[0], vector, atol=1e-6)
    # A step budget too small for all of them: more steps, the same vectors in the same order.
    small = AsyncEmbeddingEngine(str({"bert_gguf": BERT_GGUF, "xlmr_dir": XLMR_DIR, "xlmr_gguf": XLMR_GGUF,
                                      "qwen3_gguf": QWEN3_GGUF}[name]), device="cpu", max_batch_tokens=64)
    split, _ = small.embed(inputs)
    assert small.steps > 1
    assert np.allclose(split, together, atol=1e-6)
    small.terminate()


# ------------------------------------------------------------------------------------ /v1/embeddings


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from server_process import ServerProcess

    llama = Path(__file__).parent / "fixtures" / "models" / "llama"
    proc = ServerProcess(str(llama), "--embedding-model", str(XLMR_GGUF), "--no-access-log")
    yield proc
    proc.close()


def test_embeddings_endpoint_serves_a_gguf_encoder(server: Any) -> None:
    import httpx

    ref = REF["xlmr"]
    body = {"model": "xlmr-tiny", "input": ref["texts"], "encoding_format": "float"}
    floats = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60).json()
    vectors = [d["embedding"] for d in floats["data"]]
    assert min_cosine(vectors, ref["mean"]) >= BOUND
    assert floats["usage"]["prompt_tokens"] == sum(len(i) for i in ref["ids"])
    encoded = httpx.post(f"{server.url}/v1/embeddings", json={**body, "encoding_format": "base64"}, timeout=60).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist() for d in encoded["data"]]
    assert decoded == vectors  # the same floats, bit for bit
    short = httpx.post(f"{server.url}/v1/embeddings", json={**body, "dimensions": 8}, timeout=60).json()
    for cut, full in zip(short["data"], vectors):
        assert len(cut["embedding"]) == 8 and abs(np.linalg.norm(cut["embedding"]) - 1) < 1e-5
        assert cosine(cut["embedding"], full[:8]) > 0.99999
