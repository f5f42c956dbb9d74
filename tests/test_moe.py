"""Mixture-of-experts checkpoints through the public API: MLCEngine on the tiny random Qwen2-MoE and Mixtral
fixtures (tests/fixtures/models, made by gen_hf_fixtures.py; Rust's hf_parity.rs checks their logits), greedy
completions equal to transformers' greedy tokens, streamed and not, several requests at once."""

import json
from pathlib import Path

import pytest

from mlc_llm import MLCEngine

MODELS = Path(__file__).resolve().parent / "fixtures" / "models"


@pytest.mark.parametrize("name", ["qwen2_moe", "mixtral"])
def test_mlc_engine_completes_moe_checkpoints_as_transformers(name: str) -> None:
    d = MODELS / name
    ref = json.loads((d / "reference.json").read_text())
    words = lambda ids: [f"t{i}" for i in ids]  # noqa: E731  (the word-level tokenizer: token i is "t<i>")
    engine = MLCEngine(str(d), device="cpu")
    try:
        for i, prompt in enumerate(ref["prompts"]):
            out = engine.completions.create(model=str(d), prompt=prompt, max_tokens=12, temperature=0)
            assert out.choices[0].text.split() == words(ref["greedy"][i][:12]), (name, i)
        text = "".join(
            c.choices[0].text
            for c in engine.completions.create(model=str(d), prompt=ref["prompts"][2], max_tokens=12, temperature=0, stream=True)
        )
        assert text.split() == words(ref["greedy"][2][:12])
    finally:
        engine.terminate()
