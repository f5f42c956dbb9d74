"""MLC LLM's non-streaming example, with only the model path changed."""

from mlc_llm import MLCEngine
from mlc_llm.examples.default_model import smollm2_path

# Create engine
model = smollm2_path()
engine = MLCEngine(model)

# Run chat completion in OpenAI API.
response = engine.chat.completions.create(
    messages=[{"role": "user", "content": "What is the meaning of life?"}],
    model=model,
    stream=False,
)
print(response)

engine.terminate()
