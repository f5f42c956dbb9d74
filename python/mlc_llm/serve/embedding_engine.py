"""Sentence embeddings with MLC's embedding-engine API (`mlc_llm.serve.embedding_engine`), on the native
`_core.EmbeddingEngine` (rust/core/src/embedding/).

    engine = AsyncEmbeddingEngine(model, device="cpu")
    vectors, num_tokens = engine.embed(["first text", "second text"])       # or: await engine.async_embed(...)

Decoder models (Qwen3-Embedding and other causal LMs trained for it; HF, GGUF or MLC weights) pool the last
token's hidden state, after an end-of-text token where the tokenizer does not add one itself (the token such
models are trained to summarise the input in). BERT-family encoders (BGE, MiniLM, E5, RoBERTa, XLM-RoBERTa
such as BGE-M3 and multilingual-e5: an HF directory with model_type "bert", "roberta" or "xlm-roberta", or a
llama.cpp "bert" GGUF) pool as the model was trained to (its sentence-transformers pooling module or the GGUF's
pooling_type; [CLS] when it says nothing), with [CLS] and [SEP] (<s> and </s>) around the input as their
tokenizer's post-processor puts them. Vectors are L2-normalized. Many inputs run as one engine step.
"""

import asyncio
import concurrent.futures
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .._native import load_core
from ..protocol.errors import BadRequestError, EngineDeadError

Input = Union[str, Sequence[int]]

POOLING_STRATEGIES = ("last", "mean", "cls")


class AsyncEmbeddingEngine:
    """MLC's constructor: `model_lib` is accepted for compatibility (the kernels are built in);
    `pooling_strategy` is "last" (the default for decoder models), "mean" or "cls"."""

    def __init__(
        self,
        model: str,
        model_lib: Optional[str] = None,
        device: str = "auto",
        *,
        pooling_strategy: Optional[str] = None,
        max_batch_tokens: int = 2048,
    ) -> None:
        if pooling_strategy is not None and pooling_strategy not in POOLING_STRATEGIES:
            raise BadRequestError(f"pooling_strategy must be one of {POOLING_STRATEGIES}", "pooling_strategy")
        self._core = load_core().EmbeddingEngine(model, device, max_batch_tokens)
        self.info: Dict[str, Any] = json.loads(self._core.info())
        self.model_type: str = self.info["model_type"]
        encoder = self.model_type == "encoder"
        self.pooling_strategy = pooling_strategy or self.info["default_pooling"]
        # A decoder embedding model summarises the input in its end-of-text token (appended unless the
        # tokenizer's post-processor does); an encoder's input is framed by [CLS] and [SEP].
        eos = list(self.info.get("eos_token_ids") or [])
        probe = self._core.tokenize("test", True)
        self._eos: Optional[int] = None if encoder or not eos or (probe and probe[-1] in eos) else eos[0]
        frame = self.info.get("frame")
        self._cls: Optional[int] = frame[0] if frame else None
        self._sep: Optional[int] = frame[1] if frame else None
        # One worker: the native engine runs one batch at a time anyway.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding")
        self._terminated = False

    @property
    def hidden_size(self) -> int:
        return int(self.info["hidden_size"])

    @property
    def steps(self) -> int:
        """Forward passes the engine has run: inputs that fit one step together add one."""
        return int(json.loads(self._core.info())["steps"])

    def tokenize(self, inputs: Sequence[Input]) -> List[List[int]]:
        """Token ids of each input as the model embeds it (strings tokenized, ids taken as they are),
        cut to the longest input the engine takes."""
        limit = int(self.info["max_input_tokens"])
        out = []
        for item in inputs:
            if isinstance(item, str):
                ids = list(self._core.tokenize(item, True))
                if self._eos is not None and (not ids or ids[-1] != self._eos):
                    ids.append(self._eos)
                if self._cls is not None and (not ids or ids[0] != self._cls):
                    ids.insert(0, self._cls)
                if self._sep is not None and (not ids or ids[-1] != self._sep):
                    ids.append(self._sep)
            else:
                ids = list(item)
            if len(ids) > limit:
                # Cut to what the model takes, keeping the closing [SEP] an encoder expects.
                ids = ids[: limit - 1] + [self._sep] if self._sep is not None else ids[:limit]
            out.append(ids)
        return out

    def embed(self, inputs: Sequence[Input], normalize: bool = True) -> Tuple[List[List[float]], int]:
        """(one vector per input, in order; the number of tokens embedded)."""
        if self._terminated:
            raise EngineDeadError("the embedding engine has been terminated")
        token_lists = self.tokenize(inputs)
        if any(not ids for ids in token_lists):
            raise BadRequestError("an input has no tokens", "input")
        vectors = self._core.embed(token_lists, self.pooling_strategy, normalize)
        return [list(v) for v in vectors], sum(len(ids) for ids in token_lists)

    async def async_embed(
        self, inputs: Sequence[Input], normalize: bool = True
    ) -> Tuple[List[List[float]], int]:
        """`embed` on the engine's worker thread, so the event loop keeps serving."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed, inputs, normalize)

    def terminate(self) -> None:
        if not self._terminated:
            self._terminated = True
            self._executor.shutdown(wait=True)
