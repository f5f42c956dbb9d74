"""Drives a benchmark scenario: a closed loop of `concurrency` clients, or open-loop Poisson
arrivals at `request_rate` (optionally capped at `concurrency` in flight), with a progress bar.
"""

import asyncio
import random
import time
from dataclasses import dataclass
from typing import List, Optional

import httpx
from tqdm import tqdm

from .client import Endpoint, RequestRecord, send
from .stats import Summary, summarize
from .workload import Prompt


@dataclass(frozen=True)
class Scenario:
    """At most `concurrency` requests in flight; with `request_rate`, requests also arrive as a
    Poisson process of that many per second."""

    concurrency: Optional[int]
    request_rate: Optional[float] = None


async def _closed_loop(
    client: httpx.AsyncClient, endpoint: Endpoint, prompts: List[Prompt], concurrency: int, bar: tqdm
) -> List[RequestRecord]:
    """`concurrency` workers, each sending its next prompt as soon as its last one finished."""
    records: List[Optional[RequestRecord]] = [None] * len(prompts)
    next_index = iter(range(len(prompts)))

    async def worker() -> None:
        for i in next_index:  # a shared iterator: each index is taken by exactly one worker
            records[i] = await send(client, endpoint, prompts[i])
            bar.update(1)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
    return [r for r in records if r is not None]


async def _poisson(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    prompts: List[Prompt],
    rate: float,
    concurrency: Optional[int],
    seed: int,
    bar: tqdm,
) -> List[RequestRecord]:
    """Requests start at exponentially distributed gaps of mean 1/rate, whether or not the earlier
    ones finished (the load a stream of independent users puts on a server)."""
    rng = random.Random(seed)
    limit = asyncio.Semaphore(concurrency) if concurrency else None

    async def one(prompt: Prompt) -> RequestRecord:
        if limit is None:
            record = await send(client, endpoint, prompt)
        else:
            async with limit:
                record = await send(client, endpoint, prompt)
        bar.update(1)
        return record

    tasks = []
    for i, prompt in enumerate(prompts):
        if i > 0 and rate != float("inf"):
            await asyncio.sleep(rng.expovariate(rate))
        tasks.append(asyncio.create_task(one(prompt)))
    return list(await asyncio.gather(*tasks))


async def run_scenario(
    endpoint: Endpoint,
    prompts: List[Prompt],
    scenario: Scenario,
    *,
    num_warmup: int = 0,
    timeout_s: float = 600.0,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> Summary:
    """Runs `prompts` under `scenario` and summarizes them; `num_warmup` requests go first and are
    not counted. `progress=None` shows the bar only on a terminal."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        for prompt in prompts[:num_warmup]:
            await send(client, endpoint, prompt)
        label = f"c={scenario.concurrency}" if scenario.request_rate is None else f"rate={scenario.request_rate:g}/s"
        disable = None if progress is None else not progress
        with tqdm(total=len(prompts), desc=label, unit="req", disable=disable, leave=False) as bar:
            start = time.perf_counter()
            if scenario.request_rate is None:
                records = await _closed_loop(client, endpoint, prompts, scenario.concurrency or 1, bar)
            else:
                records = await _poisson(
                    client, endpoint, prompts, scenario.request_rate, scenario.concurrency, seed, bar
                )
            duration = time.perf_counter() - start
    return summarize(records, duration, scenario.concurrency, scenario.request_rate)
