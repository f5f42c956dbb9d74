"""`mlc_llm serve` as a subprocess for the server tests: started on 127.0.0.1 with port 0 (the server
prints the port it got), its log kept in a file and shown when something fails."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional

import httpx

_PYTHON_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
_LISTENING = re.compile(r"mlc_llm serve: listening on (http://[\d.]+:\d+)")


class ServerProcess:
    def __init__(self, model: str, *args: str, start_timeout_s: float = 180.0) -> None:
        self._log = tempfile.NamedTemporaryFile(prefix="mlc_llm_serve_", suffix=".log", delete=False)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_PYTHON_SRC, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONFAULTHANDLER"] = "1"  # a crash in native code leaves the Python stacks in the log
        env.setdefault("RUST_BACKTRACE", "1")
        cmd: List[str] = [sys.executable, "-m", "mlc_llm.cli.serve", model, "--device", "cpu", "--port", "0", *args]
        # A session of its own: the server gets the signals its test sends it, not those sent to the test
        # runner's process group.
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = self._wait_for_url(start_timeout_s)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    @contextmanager
    def explains_failures(self, log_chars: int = 20000) -> Iterator[None]:
        """Re-raises a failure inside the block with the server's state: its exit status (a negative one is
        the signal that ended it) and the end of its log, which the fixture deletes afterwards."""
        try:
            yield
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            status = self.process.poll()
            state = "running" if status is None else f"exited with {status}"
            raise AssertionError(
                f"{e!r}; mlc_llm serve {state}; end of its log:\n{self.log()[-log_chars:]}\nprocesses:\n{_processes()}"
            ) from e

    def _wait_for_url(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"mlc_llm serve exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        self.process.kill()
        raise RuntimeError(f"mlc_llm serve did not start within {timeout_s}s:\n{self.log()}")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def metrics(self) -> dict:
        """The unlabelled samples of /metrics as {name: value}."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def wait_idle(self, timeout_s: float = 60.0) -> dict:
        """Waits until the engine runs nothing and every KV block is free; returns /metrics."""
        deadline = time.monotonic() + timeout_s
        while True:
            m = self.metrics()
            idle = m.get("mlc_llm_engine_running") == 0 and m.get("mlc_llm_engine_waiting") == 0
            if idle and m.get("mlc_llm_kv_cache_blocks_free") == m.get("mlc_llm_kv_cache_blocks_total"):
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"engine not idle after {timeout_s}s: {m}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> Optional[int]:
        """Sends `sig` and waits; returns the exit status (killing the process if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"mlc_llm serve did not stop within {timeout_s}s:\n{self.log()}") from None
        return self.process.returncode

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._log.close()
            os.unlink(self._log.name)


def _processes() -> str:
    """`pid ppid command` of every process (what else ran when a test's server got a signal, say)."""
    rows = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmd:
            rows.append(f"{pid} {ppid} {cmd[:200]}")
    return "\n".join(rows)
