"""`HF://org/name` models through a local Hub mirror (HF_ENDPOINT) into a temporary HF_HOME.

The mirror answers like huggingface.co does for `/{org}/{name}/resolve/{revision}/{file}`: ETag and
X-Repo-Commit headers, Range requests (206 + Content-Range), a 302 with X-Linked-Etag to a CDN path for
large (LFS) files, 404 for absent files and 401 when a token is required and missing. The expected cache
layout is huggingface_hub's: `hub/models--org--name/{refs/main, snapshots/<commit>/, .no_exist/<commit>/}`.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest

from mlc_llm import MLCEngine, ModelLoadError

FIXTURE = Path(__file__).parent / "fixtures" / "models" / "llama3"
REPO = "test-org/tiny-llama3"
LLAMA3_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
# The fixture's WordLevel tokenizer only knows t0..t2047: a template that emits the contents only.
TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")
HUB_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "XDG_CACHE_HOME")


class Request(NamedTuple):
    method: str
    path: str
    authorization: Optional[str]


class HubMirror:
    """Serves `repos` ({"org/name": folder}) on 127.0.0.1 until `stop()`; records every request."""

    def __init__(self, repos: Dict[str, Path], token: Optional[str] = None) -> None:
        self.repos = repos
        self.token = token
        self.commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
        self.blobs: Dict[str, Path] = {}
        self.requests: List[Request] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.answer(self)

            def do_HEAD(self) -> None:
                mirror.answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def files_requested(self) -> List[str]:
        return [r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in self.requests if "/resolve/" in r.path]

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        self.requests.append(Request(h.command, h.path, h.headers.get("Authorization")))
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self.status(h, 401, {"X-Error-Code": "GatedRepo"})
        if h.path.startswith("/cdn/") and h.path[5:] in self.blobs:
            return self.content(h, self.blobs[h.path[5:]], {})
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", h.path)
        if match is None or match.group(1) not in self.repos:
            return self.status(h, 404, {"X-Error-Code": "RepositoryNotFound"})
        repo, revision, name = match.groups()
        commit = self.commits[repo]
        if revision not in ("main", commit):
            return self.status(h, 404, {"X-Error-Code": "RevisionNotFound"})
        path = self.repos[repo] / name
        if not path.is_file():
            return self.status(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if name.endswith(LFS_SUFFIXES):
            # huggingface.co sends LFS files to its CDN with an absolute redirect; the blob's etag
            # travels in X-Linked-Etag on the redirect itself.
            self.blobs[digest] = path
            headers = {
                "Location": f"{self.endpoint}/cdn/{digest}",
                "X-Linked-Etag": f'"{digest}"',
                "X-Linked-Size": str(path.stat().st_size),
                "X-Repo-Commit": commit,
            }
            return self.status(h, 302, headers)
        self.content(h, path, {"ETag": f'"{digest}"', "X-Repo-Commit": commit})

    @staticmethod
    def status(h: BaseHTTPRequestHandler, code: int, headers: Dict[str, str]) -> None:
        h.send_response(code)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", "0")
        h.end_headers()

    @staticmethod
    def content(h: BaseHTTPRequestHandler, path: Path, headers: Dict[str, str]) -> None:
        data = path.read_bytes()
        byte_range = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if byte_range:
            start = int(byte_range.group(1))
            end = int(byte_range.group(2)) if byte_range.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            data = data[start : end + 1]
        else:
            h.send_response(200)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command == "GET":
            h.wfile.write(data)


@pytest.fixture
def llama3_repo(tmp_path: Path) -> Path:
    """The tiny llama3 checkpoint as a Hub repository, with a chat template added."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in LLAMA3_FILES:
        shutil.copy(FIXTURE / name, repo / name)
    tokenizer_config = json.loads((repo / "tokenizer_config.json").read_text())
    tokenizer_config.setdefault("chat_template", TEMPLATE)
    (repo / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return repo


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    for name in HUB_VARS:
        monkeypatch.delenv(name, raising=False)
    return home


def snapshot_of(hf_home: Path, repo: str, commit: str) -> Path:
    return hf_home / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / commit


def chat(model: str) -> Tuple[str, int]:
    engine = MLCEngine(model, device="cpu", verbose=False)
    try:
        messages = [{"role": "user", "content": "t5 t6 t7"}]
        response = engine.chat.completions.create(messages=messages, model=model, max_tokens=4, stream=False)
        assert response.usage is not None
        return response.choices[0].message.content, response.usage.completion_tokens
    finally:
        engine.terminate()


def complete(model: str) -> int:
    """Completion tokens of a plain-prompt request: needs no chat template."""
    engine = MLCEngine(model, device="cpu", verbose=False)
    try:
        response = engine.completions.create(prompt="t5 t6 t7", model=model, max_tokens=4)
        assert response.usage is not None
        return response.usage.completion_tokens
    finally:
        engine.terminate()


def test_repo_downloads_into_the_hf_cache_then_loads_without_network(
    llama3_repo: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = HubMirror({REPO: llama3_repo})
    monkeypatch.setenv("HF_ENDPOINT", mirror.endpoint)
    try:
        text, n_tokens = chat(f"HF://{REPO}")
        assert isinstance(text, str) and 1 <= n_tokens <= 4
        commit = mirror.commits[REPO]
        repo_cache = hf_home / "hub" / "models--test-org--tiny-llama3"
        assert (repo_cache / "refs" / "main").read_text().strip() == commit
        snapshot = snapshot_of(hf_home, REPO, commit)
        assert sorted(os.listdir(snapshot)) == sorted(LLAMA3_FILES)
        for name in LLAMA3_FILES:
            assert (snapshot / name).read_bytes() == (llama3_repo / name).read_bytes(), name
        # No listing API: the MLC config is tried first, absent optional files are 404s remembered
        # the huggingface_hub way, and the weights come through the CDN redirect.
        asked = mirror.files_requested()
        assert asked.index("mlc-chat-config.json") < asked.index("config.json")
        assert (
            "generation_config.json" in asked
            and (repo_cache / ".no_exist" / commit / "generation_config.json").exists()
        )
        assert any(r.path.startswith("/cdn/") for r in mirror.requests)
        assert not any(r.path.startswith("/api/") for r in mirror.requests)

        before = len(mirror.requests)
        chat(f"hf://{REPO}")
        assert mirror.requests[before:] == [], "a cached repository must load without any request"
    finally:
        mirror.stop()
    # Server gone: the cache alone serves, by branch and by pinned commit.
    assert chat(f"HF://{REPO}")[1] >= 1
    assert chat(f"HF://{REPO}@{commit}")[1] >= 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert chat(f"HF://{REPO}")[1] >= 1


def test_gguf_file_in_a_repository(
    smollm2_path: str, tmp_path: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "gguf_repo"
    repo.mkdir()
    name = os.path.basename(smollm2_path)
    os.symlink(smollm2_path, repo / name)
    mirror = HubMirror({"test-org/smollm2": repo})
    monkeypatch.setenv("HF_ENDPOINT", mirror.endpoint)
    try:
        text, n_tokens = chat(f"HF://test-org/smollm2/{name}")
    finally:
        mirror.stop()
    assert text.strip() and n_tokens >= 1
    cached = snapshot_of(hf_home, "test-org/smollm2", mirror.commits["test-org/smollm2"]) / name
    assert os.path.getsize(cached) == os.path.getsize(smollm2_path)
    assert mirror.files_requested() == [name, name], "one metadata request and one download, nothing else"


def test_mlc_repository_fetches_the_files_its_indexes_name(
    tmp_path: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MLC directory made by `mlc_llm convert_weight` + `gen_config`, its index under the older
    ndarray-cache.json name: shards come from the index's dataPath entries and tokenizer files from
    mlc-chat-config.json's tokenizer_files; nothing else in the repository is fetched."""
    repo = tmp_path / "mlc_repo"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "python")}
    for args in (
        ["convert_weight", str(FIXTURE / "config.json"), "--quantization", "q4f16_1", "-o", str(repo)],
        ["gen_config", str(FIXTURE), "--quantization", "q4f16_1", "--conv-template", "llama-2", "-o", str(repo)],
    ):
        done = subprocess.run([sys.executable, "-m", "mlc_llm", *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    (repo / "tensor-cache.json").rename(repo / "ndarray-cache.json")
    model_files = sorted(os.listdir(repo))
    (repo / "README.md").write_text("not part of the model")
    mirror = HubMirror({"test-org/tiny-mlc": repo})
    monkeypatch.setenv("HF_ENDPOINT", mirror.endpoint)
    try:
        assert complete("HF://test-org/tiny-mlc") >= 1
    finally:
        mirror.stop()
    snapshot = snapshot_of(hf_home, "test-org/tiny-mlc", mirror.commits["test-org/tiny-mlc"])
    assert sorted(os.listdir(snapshot)) == model_files
    assert any(name.startswith("params_shard_") for name in model_files)
    asked = mirror.files_requested()
    assert asked.index("tensor-cache.json") < asked.index("ndarray-cache.json")
    assert "config.json" not in asked and "README.md" not in asked
    assert complete("HF://test-org/tiny-mlc") >= 1  # from the cache, server gone


def test_missing_repository_names_endpoint_and_cache(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = HubMirror({})
    monkeypatch.setenv("HF_ENDPOINT", mirror.endpoint)
    try:
        with pytest.raises(ModelLoadError) as raised:
            MLCEngine("HF://test-org/does-not-exist", device="cpu", verbose=False)
    finally:
        mirror.stop()
    message = str(raised.value)
    assert f"{mirror.endpoint}/test-org/does-not-exist/resolve/main/" in message
    assert str(hf_home / "hub" / "models--test-org--does-not-exist") in message

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as offline:
        MLCEngine("HF://test-org/does-not-exist", device="cpu", verbose=False)
    assert str(hf_home / "hub" / "models--test-org--does-not-exist") in str(offline.value)


def test_unreachable_endpoint_names_it(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = HubMirror({})
    mirror.stop()  # a port that was just closed: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", mirror.endpoint)
    with pytest.raises(ModelLoadError, match="cannot reach") as raised:
        MLCEngine("HF://test-org/tiny-llama3", device="cpu", verbose=False)
    assert mirror.endpoint in str(raised.value)
    assert str(hf_home / "hub") in str(raised.value)


def test_private_repository_needs_the_token(llama3_repo: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = HubMirror({REPO: llama3_repo}, token="hf_secret")
    monkeypatch.setenv("HF_ENDPOINT", mirror.endpoint)
    try:
        with pytest.raises(ModelLoadError, match="401") as raised:
            MLCEngine(f"HF://{REPO}", device="cpu", verbose=False)
        assert "HF_TOKEN" in str(raised.value)
        assert {r.authorization for r in mirror.requests} == {None}

        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        before = len(mirror.requests)
        assert chat(f"HF://{REPO}")[1] >= 1
        sent = mirror.requests[before:]
        assert sent and all(r.authorization == "Bearer hf_secret" for r in sent)
    finally:
        mirror.stop()


def test_token_file_in_hf_home(llama3_repo: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf_home.mkdir(parents=True)
    (hf_home / "token").write_text("hf_from_file\n")  # what `huggingface-cli login` writes
    mirror = HubMirror({REPO: llama3_repo}, token="hf_from_file")
    monkeypatch.setenv("HF_ENDPOINT", mirror.endpoint)
    try:
        assert chat(f"HF://{REPO}")[1] >= 1
    finally:
        mirror.stop()
    assert mirror.requests and all(r.authorization == "Bearer hf_from_file" for r in mirror.requests)
