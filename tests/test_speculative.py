"""Speculative decoding through the Python API on the real SmolLM2-135M-Instruct (CPU): prompt lookup
(`speculative_mode="ngram"`) and a draft model (`"small_draft"`, here SmolLM2 itself) give the greedy
answers of the engine without speculation, with streaming, n > 1, stop strings, logprobs, abort and
batches where only some requests speculate; acceptance shows in `metrics()`.

The session `engine` fixture (tests/conftest.py) is the engine without speculation."""

import asyncio
from typing import Any, Dict, Iterator, List

import pytest

from mlc_llm import AsyncMLCEngine, BadRequestError, MLCEngine

SENTENCE = (
    "Mitochondria are membrane-bound organelles that generate most of the chemical energy needed to power "
    "the biochemical reactions of the cell."
)
REPEAT = [{"role": "user", "content": f"Repeat this sentence exactly, word for word: {SENTENCE}"}]
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in two sentences."}]


@pytest.fixture(scope="module")
def ngram_engine(smollm2_path: str) -> Iterator[MLCEngine]:
    eng = MLCEngine(smollm2_path, device="cpu", speculative_mode="ngram", verbose=False)
    yield eng
    eng.terminate()


@pytest.fixture(scope="module")
def draft_engine(smollm2_path: str) -> Iterator[MLCEngine]:
    eng = MLCEngine(smollm2_path, device="cpu", speculative_mode="small_draft", additional_models=[smollm2_path],
                    spec_draft_length=4, verbose=False)
    yield eng
    eng.terminate()


def chat(engine: MLCEngine, messages: List[Dict[str, str]], **kw: Any) -> Any:
    return engine.chat.completions.create(messages=messages, temperature=0, **kw)


def spec_counters(engine: MLCEngine) -> Dict[str, float]:
    m = engine.metrics()
    return {k: m[k] for k in ("spec_draft_tokens", "spec_accepted_tokens", "spec_verify_steps", "spec_acceptance_rate")}


def test_prompt_lookup_repeats_back_with_most_drafts_accepted(engine: MLCEngine, ngram_engine: MLCEngine) -> None:
    before = spec_counters(ngram_engine)
    want = chat(engine, REPEAT, max_tokens=64).choices[0].message.content
    got = chat(ngram_engine, REPEAT, max_tokens=64).choices[0].message.content
    assert got == want
    after = spec_counters(ngram_engine)
    proposed = after["spec_draft_tokens"] - before["spec_draft_tokens"]
    accepted = after["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    assert proposed > 0 and accepted / proposed > 0.5, (accepted, proposed)


@pytest.mark.parametrize("fixture", ["ngram_engine", "draft_engine"])
def test_greedy_streams_equal_plain_decoding(engine: MLCEngine, fixture: str, request: pytest.FixtureRequest) -> None:
    spec: MLCEngine = request.getfixturevalue(fixture)
    for messages in (REPEAT, QUESTION):
        want = chat(engine, messages, max_tokens=48).choices[0].message.content
        chunks = chat(spec, messages, max_tokens=48, stream=True)
        got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert got == want


def test_draft_equal_to_target_accepts_every_greedy_draft(draft_engine: MLCEngine) -> None:
    before = spec_counters(draft_engine)
    chat(draft_engine, QUESTION, max_tokens=32)
    after = spec_counters(draft_engine)
    assert after["spec_draft_tokens"] > before["spec_draft_tokens"]
    assert after["spec_accepted_tokens"] - before["spec_accepted_tokens"] == after["spec_draft_tokens"] - before["spec_draft_tokens"]


def test_logprobs_and_stop_strings_match_plain_decoding(engine: MLCEngine, ngram_engine: MLCEngine) -> None:
    kw = dict(max_tokens=48, logprobs=True, top_logprobs=2, stop=["chemical"])
    want = chat(engine, REPEAT, **kw).choices[0]
    got = chat(ngram_engine, REPEAT, **kw).choices[0]
    assert got.message.content == want.message.content and got.finish_reason == want.finish_reason == "stop"
    assert "chemical" not in got.message.content
    assert [t.token for t in got.logprobs.content] == [t.token for t in want.logprobs.content]
    for g, w in zip(got.logprobs.content, want.logprobs.content):
        assert abs(g.logprob - w.logprob) < 1e-3
        assert [t.token for t in g.top_logprobs] == [t.token for t in w.top_logprobs]


def test_sampling_with_n_and_seeds_runs(ngram_engine: MLCEngine) -> None:
    r = ngram_engine.chat.completions.create(messages=REPEAT, temperature=0.8, n=3, seed=7, max_tokens=24)
    assert len(r.choices) == 3 and all(c.message.content for c in r.choices)
    again = ngram_engine.chat.completions.create(messages=REPEAT, temperature=0.8, n=3, seed=7, max_tokens=24)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_mixed_batches_and_abort(engine: MLCEngine, smollm2_path: str) -> None:
    """Requests with penalties do not speculate; they share steps with ones that do, and an aborted
    speculating request frees everything it held."""
    plain_repeat = chat(engine, REPEAT, max_tokens=40).choices[0].message.content
    plain_penalty = chat(engine, QUESTION, max_tokens=40, frequency_penalty=0.5).choices[0].message.content

    async def run() -> None:
        eng = AsyncMLCEngine(smollm2_path, device="cpu", mode="server", max_batch_size=8,
                             speculative_mode="ngram", verbose=False)
        try:
            async def text(messages: List[Dict[str, str]], **kw: Any) -> str:
                r = await eng.chat.completions.create(messages=messages, temperature=0, max_tokens=40, **kw)
                return r.choices[0].message.content

            async def aborted() -> None:
                stream = await eng.chat.completions.create(messages=REPEAT, temperature=0, max_tokens=200, stream=True,
                                                           request_id="to-abort")
                async for _ in stream:
                    await eng.abort("to-abort")

            results = await asyncio.gather(text(REPEAT), text(QUESTION, frequency_penalty=0.5), aborted())
            assert results[0] == plain_repeat and results[1] == plain_penalty
            m = await eng.metrics()
            assert m["num_free_blocks"] == m["num_total_blocks"]
            assert m["spec_verify_steps"] > 0
        finally:
            eng.terminate()

    asyncio.run(run())


def test_metrics_expose_acceptance(ngram_engine: MLCEngine) -> None:
    chat(ngram_engine, REPEAT, max_tokens=16)
    m = ngram_engine.metrics()
    for key in ("spec_acceptance_rate", "spec_mean_accepted_length", "spec_draft_tokens", "spec_accepted_tokens",
                "spec_verify_steps", "spec_draft_time_s", "spec_verify_time_s", "spec_draft_failures"):
        assert key in m.to_dict()
    assert "spec_acceptance_rate" in m.prometheus_text()


def test_bad_speculation_arguments(smollm2_path: str) -> None:
    with pytest.raises(BadRequestError, match="additional_models"):
        MLCEngine(smollm2_path, device="cpu", speculative_mode="small_draft", verbose=False)
    with pytest.raises(BadRequestError, match="spec_draft_length"):
        MLCEngine(smollm2_path, device="cpu", speculative_mode="ngram", spec_draft_length=-1, verbose=False)


def test_server_metrics_export_acceptance(ngram_engine: MLCEngine) -> None:
    from mlc_llm.serve.server.metrics import ServerMetrics

    chat(ngram_engine, REPEAT, max_tokens=16)
    text = ServerMetrics(lambda: ngram_engine.metrics().to_dict()).render().decode()
    for name in ("mlc_llm_spec_acceptance_rate", "mlc_llm_spec_draft_tokens_total", "mlc_llm_spec_accepted_tokens_total",
                 "mlc_llm_spec_mean_accepted_length"):
        assert name in text, name
