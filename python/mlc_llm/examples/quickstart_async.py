"""MLC LLM's AsyncMLCEngine example, with only the model path changed."""

import asyncio
from typing import Dict

from mlc_llm.serve import AsyncMLCEngine
from mlc_llm.examples.default_model import smollm2_path

model = smollm2_path()
prompts = [
    "Write a three-day travel plan to Pittsburgh.",
    "What is the meaning of life?",
]


async def test_completion():
    # Create engine
    async_engine = AsyncMLCEngine(model=model)

    num_requests = len(prompts)
    output_texts: Dict[str, str] = {}

    async def generate_task(prompt: str):
        async for response in await async_engine.chat.completions.create(
            messages=[{"role": "user", "content": prompt}],
            model=model,
            stream=True,
            max_tokens=128,  # a bound, so that the example ends in seconds on a laptop CPU
        ):
            if response.id not in output_texts:
                output_texts[response.id] = ""
            for choice in response.choices:
                output_texts[response.id] += choice.delta.content or ""

    tasks = [asyncio.create_task(generate_task(prompts[i])) for i in range(num_requests)]
    await asyncio.gather(*tasks)

    # Print output.
    for request_id, output in output_texts.items():
        print(f"Output of request {request_id}:\n{output}\n")

    async_engine.terminate()


asyncio.run(test_completion())
