"""`mlc_llm chat` on the real SmolLM2-135M-Instruct (CPU): through a pipe (answers only, no prompt
decorations) and through a pseudo-terminal (prompt, commands, Ctrl-C and Ctrl-D), plus the
conversation object it drives.

Greedy answers from the command line are checked against the same question asked through the
Python API, and the kept conversation is checked through the prompt length that /stats reports.
"""

import os
import re
import subprocess
import sys
from typing import Any, Dict, List

import pytest

from mlc_llm.cli.chat_session import ChatSession

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = "What is the capital of France?"
STATS = re.compile(
    r"prompt: (\d+) tokens, prefill: ([\d.]+) tok/s \((\d+) tokens\), decode: ([\d.]+) tok/s \((\d+) tokens\)"
)
MAX_TOKENS = 12


def _env(smollm2_path: str) -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"), MLC_SMOLLM2_GGUF=smollm2_path)


def _greedy_answer(engine: Any, messages: List[Dict[str, str]]) -> str:
    response = engine.chat.completions.create(messages=messages, max_tokens=MAX_TOKENS, temperature=0.0)
    return str(response.choices[0].message.content)


# ------------------------------------------------------------------------------------ the session


def test_session_streams_and_keeps_the_conversation(engine: Any, smollm2_path: str) -> None:
    session = ChatSession(engine, smollm2_path, {"max_tokens": MAX_TOKENS, "temperature": 0.0})
    pieces: List[str] = []
    answer = session.ask(QUESTION, pieces.append)
    assert len(pieces) > 1, "the answer arrived in one piece, not streamed"
    assert "".join(pieces) == answer == _greedy_answer(engine, [{"role": "user", "content": QUESTION}])
    first = session.last_stats
    assert first is not None and 0 < first.completion_tokens <= MAX_TOKENS
    assert first.prefill_tokens_per_s > 0 and first.decode_tokens_per_s > 0

    follow_up = "And of Germany?"
    second = session.ask(follow_up, lambda _: None)
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": follow_up},
    ]
    assert second == _greedy_answer(engine, history)
    assert session.messages == history + [{"role": "assistant", "content": second}]
    assert session.last_stats is not None and session.last_stats.prompt_tokens > first.prompt_tokens

    session.reset()
    assert session.messages == [] and session.last_stats is None


def test_session_set_options(engine: Any, smollm2_path: str) -> None:
    session = ChatSession(engine, smollm2_path, {"temperature": None})
    assert session.sampling == {}
    assert session.set_options("temperature=0.5; max_tokens=3") == {"temperature": 0.5, "max_tokens": 3}
    session.ask("Hi", lambda _: None)
    assert session.last_stats is not None and session.last_stats.completion_tokens <= 3
    for bad in ("temperature=hot", "colour=blue", "max_tokens"):
        with pytest.raises(ValueError):
            session.set_options(bad)


# ------------------------------------------------------------------------------------------- pipe


def test_chat_through_a_pipe(engine: Any, smollm2_path: str) -> None:
    script = "\n".join([QUESTION, "/stats", QUESTION, "/stats", "/reset", "/stats", QUESTION, "/stats", "/exit",
                        "this line is never read"]) + "\n"
    result = subprocess.run(
        [sys.executable, "-m", "mlc_llm", "chat", smollm2_path, "--device", "cpu", "--max-tokens", str(MAX_TOKENS),
         "--temperature", "0"],
        input=script, capture_output=True, text=True, env=_env(smollm2_path), cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert ">>>" not in out and "/help" not in out, "prompt decorations on a pipe"
    expected = _greedy_answer(engine, [{"role": "user", "content": QUESTION}])
    assert expected.strip()
    assert out.startswith(expected + "\n")

    prompts = [int(m.group(1)) for m in STATS.finditer(out)]
    assert len(prompts) == 3, out
    # The second turn carries the first; after /reset the prompt is the first one again.
    assert prompts[1] > prompts[0] and prompts[2] == prompts[0]
    assert "conversation reset\nno statistics yet" in out
    assert "never read" not in out


def test_chat_pipe_reports_a_missing_model(smollm2_path: str, tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlc_llm", "chat", str(tmp_path / "missing.gguf"), "--device", "cpu"],
        input="hello\n", capture_output=True, text=True, env=_env(smollm2_path), cwd=REPO, timeout=120,
    )
    assert result.returncode == 1
    assert "mlc_llm chat:" in result.stderr and "Traceback" not in result.stderr


def test_chat_rejects_bad_overrides(smollm2_path: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlc_llm", "chat", "--overrides", "max_num_sequense=4"],
        input="", capture_output=True, text=True, env=_env(smollm2_path), cwd=REPO, timeout=120,
    )
    assert result.returncode == 1
    assert "unknown override 'max_num_sequense'" in result.stderr


# ------------------------------------------------------------------------------- pseudo-terminal


def _spawn(smollm2_path: str, *extra: str) -> Any:
    pexpect = pytest.importorskip("pexpect")
    # No MODEL argument: the embedded SmolLM2 is the default.
    child = pexpect.spawn(
        sys.executable, ["-m", "mlc_llm", "chat", "--device", "cpu", "--temperature", "0", *extra],
        env=_env(smollm2_path), cwd=REPO, encoding="utf-8", timeout=180, dimensions=(50, 200),
    )
    child.expect_exact("Type /help for commands.")
    child.expect_exact(">>> ")
    return child


def _exit_status(child: Any) -> int:
    child.expect(__import__("pexpect").EOF)
    child.close()
    return int(child.exitstatus if child.exitstatus is not None else -1)


def test_chat_in_a_terminal(engine: Any, smollm2_path: str) -> None:
    child = _spawn(smollm2_path, "--max-tokens", str(MAX_TOKENS))
    child.sendline(QUESTION)
    child.expect_exact(">>> ")
    expected = _greedy_answer(engine, [{"role": "user", "content": QUESTION}])
    transcript = child.before.replace("\r\n", "\n")
    assert expected.replace("\r\n", "\n") in transcript

    child.sendline("/stats")
    child.expect(STATS)
    child.expect_exact(">>> ")
    child.sendline("/help")
    child.expect_exact("/reset")
    child.expect_exact(">>> ")
    child.sendline("/reset")
    child.expect_exact("conversation reset")
    child.expect_exact(">>> ")
    child.sendline("/stats")
    child.expect_exact("no statistics yet")
    child.expect_exact(">>> ")
    child.sendline("/exit")
    assert _exit_status(child) == 0


def test_chat_terminal_ctrl_c_stops_an_answer_and_ctrl_d_quits(smollm2_path: str) -> None:
    child = _spawn(smollm2_path, "--max-tokens", "4000")
    child.sendline("/set max_tokens=4000")
    child.expect_exact("set max_tokens=4000")
    child.expect_exact(">>> ")
    child.sendline("Count from 1 to 1000, one number per line.")
    child.expect(r"\d")  # the answer has started streaming
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact(">>> ")
    # The engine is still usable after an interrupted answer.
    child.sendline("/set max_tokens=4")
    child.expect_exact(">>> ")
    child.sendline("Hi")
    child.expect_exact(">>> ")
    child.sendline("/stats")
    child.expect(STATS)
    assert int(child.match.group(5)) <= 4
    child.expect_exact(">>> ")
    child.sendeof()
    assert _exit_status(child) == 0


def test_chat_terminal_ctrl_c_at_the_prompt_quits(smollm2_path: str) -> None:
    child = _spawn(smollm2_path)
    child.sendintr()
    assert _exit_status(child) == 0
