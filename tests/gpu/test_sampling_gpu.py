"""Batched sampling on the GPU against the CPU sampler (run with `pytest -m gpu tests/gpu`).

Cases run on the Rust side (`mlc_llm._core._sampling_check`, see `mlc_core::sampler::gpu_check`): random
logits with ties, NaN, -inf and +inf, sequences with prompt and output tokens (penalty state) and random
logit_bias, sampled over several steps by `sample_batch` on the CPU and `sample_on_device` on cuda:0 with
identically seeded generators, so each row draws with the same uniform number on both sides. Greedy rows
must give the same tokens; sampled rows may differ only where a uniform lands on a CDF boundary within
f64 rounding, so >= 99 % agreement is required. Logprobs are compared with a log-softmax of the row the
CPU sampled from (error relative to max(1, |logprob|)).

The chi-square test checks the device's draws over a tiny vocabulary, for many seeds, against the
distribution computed here in Python from the logits (softmax with temperature, top_k, top_p, min_p).

Numbers are printed and, when MLC_GPU_RESULTS names a file, appended to it as JSON lines. Skips become
failures with MLC_REQUIRE_GPU=1, as in test_smoke.py.
"""

import json
import math

import pytest

from test_engine_gpu import _record, _skip, core  # noqa: F401 - fixtures are used by name

pytestmark = pytest.mark.gpu

_VOCABS = [1, 7, 32000, 128256, 151936]
_LOGPROB_TOL = 1e-4


@pytest.fixture(scope="module")
def sampling_core(core):
    if not hasattr(core, "_sampling_check"):
        _skip("this build of mlc_llm._core has no sampling test entry point")
    return core


def _run(c, seed, case):
    r = json.loads(c._sampling_check("cuda:0", seed, json.dumps(case)))
    summary = {k: v for k, v in r.items() if k not in ("device_counts", "cpu_counts")}
    _record("sampling", {"seed": seed, "batch": case["batch"], "vocab": r["vocab"], "steps": case.get("steps", 1),
                         **summary})
    return r


_GREEDY_ROWS = [
    {"temperature": 0.0},
    {"temperature": 0.0, "logprobs": True, "top_logprobs": 5},
    {"temperature": 0.0, "repetition_penalty": 1.3, "prompt": 40, "output": 10, "logprobs": True, "top_logprobs": 20},
    {"temperature": 0.0, "frequency_penalty": 0.7, "presence_penalty": 0.4, "output": 30, "bias": 8},
    {"temperature": 0.0, "pos_inf": 3, "logprobs": True, "top_logprobs": 4},
    {"temperature": 0.0, "degenerate": True, "bias": 3, "logprobs": True, "top_logprobs": 2},
]

_SAMPLED_ROWS = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 50},
    {"temperature": 1.0, "top_p": 0.9},
    {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "logprobs": True, "top_logprobs": 5},
    {"temperature": 1.3, "min_p": 0.1, "repetition_penalty": 1.2, "prompt": 30, "output": 12},
    {"temperature": 0.6, "top_p": 0.5, "frequency_penalty": 0.5, "presence_penalty": 0.3, "output": 40, "bias": 6},
    {"temperature": 1.0, "top_k": 1},
    {"temperature": 2.0, "top_k": 1000, "top_p": 0.99, "logprobs": True, "top_logprobs": 20},
    {"temperature": 1.0, "top_p": 0.0},
    {"temperature": 0.9, "pos_inf": 2, "top_p": 0.8},
    {"temperature": 1.0, "degenerate": True, "bias": 2, "logprobs": True, "top_logprobs": 3},
]


def _steps(batch, vocab):
    # Enough sampled rows per case for the agreement rate to mean something, within CPU-reference time.
    rows = 512 if vocab < 100000 else 192
    return max(1, rows // batch)


def _check_logprobs(r):
    assert r["max_logprob_err"] < _LOGPROB_TOL, r
    assert r["top_id_mismatches"] == 0, r
    assert r["max_top_logprob_err"] < _LOGPROB_TOL, r


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("vocab", _VOCABS)
def test_greedy_rows_identical(sampling_core, vocab, batch):
    for quantum, seed in [(0.0, vocab + batch), (0.5, 7 * vocab + batch)]:
        case = {"batch": batch, "vocab": vocab, "rows": _GREEDY_ROWS, "steps": 4, "quantum": quantum,
                "ties": 0.01, "max_ties": 3, "special": 0.01}
        r = _run(sampling_core, seed, case)
        assert r["greedy_rows"] == batch * 4, r
        assert r["greedy_mismatches"] == 0, r
        _check_logprobs(r)


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("vocab", _VOCABS)
def test_sampled_rows_agree(sampling_core, vocab, batch):
    steps = _steps(batch, vocab)
    for quantum, seed in [(0.0, 3 * vocab + batch), (0.25, 11 * vocab + batch)]:
        case = {"batch": batch, "vocab": vocab, "rows": _SAMPLED_ROWS, "steps": steps, "quantum": quantum,
                "ties": 0.01, "max_ties": 2, "special": 0.01}
        r = _run(sampling_core, seed, case)
        assert r["sampled_rows"] == batch * steps, r
        assert r["token_agreement"] >= 0.99, r
        _check_logprobs(r)


def test_mixed_batch(sampling_core):
    """Greedy and sampled rows of every kind in one launch, at a Qwen-sized vocabulary."""
    case = {"batch": 48, "vocab": 151936, "rows": _GREEDY_ROWS + _SAMPLED_ROWS, "steps": 3, "ties": 0.001,
            "max_ties": 2, "special": 0.001}
    r = _run(sampling_core, 5, case)
    assert r["greedy_mismatches"] == 0, r
    assert r["token_agreement"] >= 0.99, r
    _check_logprobs(r)


# ---------------------------------------------------------------------------------------------------
# The device's draws against the distribution, over many seeds.

_TINY = [1.5, 0.2, -0.7, 1.1, -3.0, 0.9, 0.0]


def _expected(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """Probabilities of each token under the documented rules, written independently of the engine."""
    n = len(logits)
    m = max(logits)
    weights = [math.exp((x - m) / temperature) for x in logits]
    keep = [True] * n
    if 0 < top_k <= n:
        kth = sorted(logits, reverse=True)[top_k - 1]
        keep = [x >= kth for x in logits]  # ties with the k-th are kept
    if top_p < 1.0:
        total = sum(w for w, k in zip(weights, keep) if k)
        order = sorted((i for i in range(n) if keep[i]), key=lambda i: (-logits[i], i))
        mass, nucleus = 0.0, set()
        for i in order:
            if mass >= top_p * total and nucleus:
                break
            nucleus.add(i)
            mass += weights[i]
        keep = [i in nucleus for i in range(n)]
    kept = [w if k and w >= min_p else 0.0 for w, k in zip(weights, keep)]
    total = sum(kept)
    return [w / total for w in kept]


def _chi_square_critical(df, z=3.719):
    """Wilson-Hilferty approximation of the chi-square quantile at p = 1e-4 (z of the normal)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


@pytest.mark.parametrize("params", [
    {"temperature": 1.0},
    {"temperature": 0.5},
    {"temperature": 1.0, "top_k": 3},
    {"temperature": 1.0, "top_p": 0.8},
    {"temperature": 2.0, "min_p": 0.3},
    {"temperature": 0.8, "top_k": 5, "top_p": 0.9, "min_p": 0.05},
])
def test_chi_square_over_seeds(sampling_core, params):
    batch, steps = 512, 40  # 512 seeds, 40 draws each
    case = {"batch": batch, "steps": steps, "logits": _TINY, "rows": [params]}
    r = _run(sampling_core, 1234, case)
    counts = r["device_counts"]
    n = batch * steps
    assert sum(counts) == n, r
    probs = _expected(_TINY, **params)
    for c, p in zip(counts, probs):
        if p == 0.0:
            assert c == 0, (counts, probs)
    support = [(c, p) for c, p in zip(counts, probs) if p > 0.0]
    stat = sum((c - n * p) ** 2 / (n * p) for c, p in support)
    df = len(support) - 1
    _record("sampling_chi_square", {**params, "draws": n, "counts": counts, "chi2": stat, "df": df})
    if df > 0:
        assert stat < _chi_square_critical(df), (stat, df, counts, probs)
    # The same uniforms on the CPU give (almost) the same draws.
    diff = sum(abs(a - b) for a, b in zip(counts, r["cpu_counts"]))
    assert diff <= 0.01 * n, (counts, r["cpu_counts"])
