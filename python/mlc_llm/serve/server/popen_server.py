"""`PopenServer`: `mlc_llm serve` in a subprocess, started and stopped from Python, with MLC's
constructor, `start(extra_env)`, `terminate()`, context-manager use and `base_url` /
`openai_v1_base_url` attributes, so MLC's tests and docs that launch a server this way run unchanged.

    with PopenServer(model, device="cpu", port=8082) as server:
        client = openai.OpenAI(base_url=server.openai_v1_base_url, api_key="none")
"""

import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Literal, Optional

import httpx

from ...protocol.errors import ModelLoadError
from ..config import EngineConfig

# EngineConfig fields passed as `--overrides`, by the names MLC's PopenServer uses for them.
_OVERRIDES = (
    ("max_num_sequence", "max_num_sequence"),
    ("max_total_sequence_length", "max_total_seq_length"),
    ("prefill_chunk_size", "prefill_chunk_size"),
    ("max_history_size", "max_history_size"),
    ("gpu_memory_utilization", "gpu_memory_utilization"),
    ("spec_draft_length", "spec_draft_length"),
    ("prefix_cache_max_num_recycling_seqs", "prefix_cache_max_num_recycling_seqs"),
)


class PopenServer:
    """The REST server of `model` in a background process (see `mlc_llm serve --help` for what the
    arguments mean). Readiness is polled on /health, which needs no API key."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        *,
        model_lib: Optional[str] = None,
        mode: Literal["local", "interactive", "server"] = "local",
        engine_config: Optional[EngineConfig] = None,
        enable_debug: bool = True,
        enable_tracing: bool = False,
        host: str = "127.0.0.1",
        port: int = 8082,
    ) -> None:
        self.model = model
        self.model_lib = model_lib
        self.device = device
        self.mode = mode
        self.engine_config = engine_config or EngineConfig()
        self.enable_debug = enable_debug
        self.enable_tracing = enable_tracing
        self.host = host
        self.port = port
        self.base_url = ""
        self.openai_v1_base_url = ""
        self._proc: Optional["subprocess.Popen[bytes]"] = None

    def command(self) -> List[str]:
        """The `python -m mlc_llm serve ...` command line that `start` runs."""
        cfg = self.engine_config
        cmd = [sys.executable, "-m", "mlc_llm", "serve", self.model, "--device", str(self.device), "--mode", self.mode]
        if self.model_lib is not None:
            cmd += ["--model-lib", self.model_lib]
        if cfg.additional_models:
            models = [m if isinstance(m, str) else f"{m[0]}:{m[1]}" for m in cfg.additional_models]
            cmd += ["--additional-models", *models]
        cmd += ["--speculative-mode", cfg.speculative_mode, "--prefix-cache-mode", cfg.prefix_cache_mode]
        overrides = [f"{flag}={getattr(cfg, name)}" for name, flag in _OVERRIDES if getattr(cfg, name)]
        if overrides:
            cmd += ["--overrides", ";".join(overrides)]
        if self.enable_tracing:
            cmd += ["--enable-tracing"]
        if self.enable_debug:
            cmd += ["--enable-debug"]
        return cmd + ["--host", self.host, "--port", str(self.port)]

    def start(self, extra_env: Optional[Dict[str, str]] = None, timeout_s: float = 120.0) -> None:
        """Launches the server and returns once it answers; raises ModelLoadError if it exits first
        and TimeoutError if it is not ready within `timeout_s`."""
        env = {**os.environ, **(extra_env or {})}
        # Output goes to this process's stdout / stderr, never to a pipe nobody reads (it would fill
        # and block the server).
        self._proc = subprocess.Popen(self.command(), env=env)
        self.base_url = f"http://{self.host}:{self.port}"
        self.openai_v1_base_url = f"{self.base_url}/v1"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise ModelLoadError(
                    f"mlc_llm serve {self.model!r} exited with status {code} before it was ready "
                    "(its output above says why: a model that cannot load, a port in use, ...)"
                )
            try:
                if httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.terminate()
        raise TimeoutError(f"mlc_llm serve did not become ready within {timeout_s:.0f} s")

    def terminate(self, timeout_s: float = 30.0) -> None:
        """Stops the server (SIGTERM: running requests are aborted after its shutdown timeout; killed
        if it is still there after `timeout_s`). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> "PopenServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()
