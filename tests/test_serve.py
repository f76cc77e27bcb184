"""`nativevl serve` end to end: a real server process on loopback, the real `openai` client, bad requests,
disconnects, concurrency, a load test and graceful shutdown. Answers are checked against `Pipeline` / `chat`
run in this process on the same tiny checkpoint (greedy unless a test samples)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from reference import tiny_checkpoint

from nativevl import Pipeline
from nativevl.serve.api import BodyLimit, model_id, server_urls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(folder.parent / f"serve-{port}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "nativevl", "serve", str(folder), "--port", str(port), *flags],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not start: {(folder.parent / f'serve-{port}.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")
    media = folder.parent / "media"
    media.mkdir()
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (120, 500, 3), dtype=np.uint8)).save(media / "wide.png")
    (media / "notes.txt").write_text("not an image")
    (folder.parent / "secret.png").write_bytes((folder / "photo.png").read_bytes())
    (media / "link.png").symlink_to(folder.parent / "secret.png")
    return folder


@pytest.fixture(scope="module")
def server(ckpt):
    proc, url = start_server(ckpt, "--allowed-local-media-path", str(ckpt.parent / "media"), "--max-images", "3",
                             "--max-body-bytes", "3000000", "--max-model-len", "4096", "--max-batch", "16",
                             "--max-tiles", "6")
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def pipe(ckpt):
    return Pipeline(ckpt, max_num=6)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=120)


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def user(text: str, *images: str) -> dict:
    return {"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in images),
                                        {"type": "text", "text": text}]}


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_answer_equals_pipeline_and_counts_usage(client, pipe, ckpt):
    done = client.chat.completions.create(model="tiny", messages=[user("What is it?", data_url(ckpt / "photo.png"))],
                                          max_tokens=12)
    expected = pipe("What is it?", images=[ckpt / "photo.png"], max_new_tokens=12)
    assert done.choices[0].message.content == expected and done.choices[0].finish_reason == "length"
    question, pixels, patches = pipe.prepare("What is it?", [ckpt / "photo.png"])
    from nativevl.infer.chat import build_query
    prompt_ids = pipe.tokenizer.prompt_ids(build_query(pipe.model, question, pixels, None, patches)[1])
    assert done.usage.prompt_tokens == len(prompt_ids) and done.usage.completion_tokens == 12


def test_streaming_pieces_join_to_the_answer(client, pipe, ckpt):
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[user("Describe it.", data_url(ckpt / "photo.png"))], max_tokens=10, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it did stream
    assert text.strip() == pipe("Describe it.", images=[ckpt / "photo.png"], max_new_tokens=10)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices


def test_multi_turn_with_several_images_and_a_system_message(client, pipe, ckpt):
    media = ckpt.parent / "media"
    messages = [{"role": "system", "content": "Be brief."},
                user("What is in the first?", data_url(ckpt / "photo.png")),
                {"role": "assistant", "content": "Noise."},
                user("And the second?", data_url(media / "wide.png"))]
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8).choices[0].message.content
    from nativevl.data.image import load_image
    from nativevl.infer.chat import chat
    tiles = [load_image(p, input_size=448, max_num=6) for p in (ckpt / "photo.png", media / "wide.png")]
    import torch
    pipe.model.config.system_message, saved = "Be brief.", pipe.model.config.system_message
    try:
        expected = chat(pipe.model, pipe.tokenizer, torch.cat(tiles), "Image-2: <image>\nAnd the second?",
                        dict(max_new_tokens=8), history=[("Image-1: <image>\nWhat is in the first?", "Noise.")],
                        num_patches_list=[t.shape[0] for t in tiles])
    finally:
        pipe.model.config.system_message = saved
    assert got == expected


def test_local_paths_only_under_the_allowed_folder(client, pipe, ckpt):
    media = ckpt.parent / "media"
    got = client.chat.completions.create(model="tiny", messages=[user("Hm?", str(media / "wide.png"))], max_tokens=6)
    assert got.choices[0].message.content == pipe("Hm?", images=[media / "wide.png"], max_new_tokens=6)
    for path in (str(ckpt / "photo.png"), str(media / ".." / "secret.png"), str(media / "link.png"), "/etc/passwd"):
        with pytest.raises(openai.BadRequestError, match="outside the folder"):
            client.chat.completions.create(model="tiny", messages=[user("Hm?", path)], max_tokens=4)


def test_sampling_n_choices_with_a_seed_is_reproducible(client, pipe, ckpt):
    args = dict(model="tiny", messages=[user("Hi", data_url(ckpt / "photo.png"))], max_tokens=10, n=3, seed=7,
                temperature=0.9, top_p=0.9)
    first = [c.message.content for c in client.chat.completions.create(**args).choices]
    again = [c.message.content for c in client.chat.completions.create(**args).choices]
    assert first == again and len(set(first)) > 1
    for k in range(3):  # choice k samples with seed + k, as `chat` would alone
        assert first[k] == pipe("Hi", images=[ckpt / "photo.png"], max_new_tokens=10, do_sample=True,
                                temperature=0.9, top_p=0.9, seed=7 + k)


def test_stop_strings_cut_the_answer(client, pipe, ckpt):
    full = pipe("Stop?", images=[ckpt / "photo.png"], max_new_tokens=16)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    got = client.chat.completions.create(model="tiny", messages=[user("Stop?", data_url(ckpt / "photo.png"))],
                                         max_tokens=16, stop=[stop]).choices[0]
    assert got.finish_reason == "stop" and got.message.content == full.split(stop)[0].strip()


@pytest.fixture(scope="module")
def hits(ckpt):
    """A web server on loopback that counts requests and serves photo.png: the API must not make the server
    fetch a URL unless the operator allows remote images."""
    count = []
    photo = (ckpt / "photo.png").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            count.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.end_headers()
            self.wfile.write(photo)

        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    yield web.server_address[1], count
    web.shutdown()


def post(server: str, body: bytes | dict, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server + "/v1/chat/completions", content=content,
                      headers={"content-type": "application/json", **headers}, timeout=60)


def bad_requests(ckpt: Path, web_port: int) -> list[tuple[str, bytes | dict, int, str]]:
    ok = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    img = data_url(ckpt / "photo.png")
    text_file = "data:image/png;base64," + base64.b64encode(b"hello, not a picture").decode()
    return [
        ("malformed JSON", b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
        ("wrong type", {**ok, "max_tokens": "many"}, 400, "max_tokens"),
        ("missing field", {"model": "tiny"}, 400, "messages"),
        ("unknown model", {**ok, "model": "gpt-9"}, 404, "does not exist"),
        ("bad base64", {**ok, "messages": [user("x", "data:image/png;base64,@@@")]}, 400, "not valid base64"),
        ("not an image", {**ok, "messages": [user("x", text_file)]}, 400, "not a readable image"),
        ("outside path", {**ok, "messages": [user("x", "/etc/hosts")]}, 400, "outside the folder"),
        ("not an image on disk", {**ok, "messages": [user("x", "notes.txt")]}, 400, "not a readable image"),
        ("remote URL", {**ok, "messages": [user("x", f"http://127.0.0.1:{web_port}/a.png")]}, 400, "turned off"),
        ("too many images", {**ok, "messages": [user("x", img, img, img, img)]}, 400, "at most 3"),
        ("too long", {**ok, "max_tokens": 5000}, 400, "context"),
        ("roles out of order", {**ok, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "alternate"),
        ("placeholders disagree", {**ok, "messages": [user("<image><image>", img)]}, 400, "placeholder"),
        ("n too large", {**ok, "n": 99}, 400, "at most 8"),
        ("bad temperature", {**ok, "temperature": -1}, 400, "temperature"),
        ("tools", {**ok, "tools": [{"type": "function"}]}, 400, "not supported"),
        ("body too large", {**ok, "pad": "x" * 3_100_000}, 413, "limit"),
    ]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, ckpt, hits):
    port, fetched = hits
    for name, body, status, words in bad_requests(ckpt, port):
        r = post(server, body)
        assert r.status_code == status, (name, r.text)
        error = r.json()["error"]
        assert words in error["message"] and error["type"], (name, error)
    assert fetched == []  # the remote URL was never fetched
    r = httpx.post(server + "/v1/chat/completions", content=b"x" * 3_100_000, timeout=60,
                   headers={"content-type": "application/json", "transfer-encoding": "chunked"})
    assert r.status_code == 413  # no Content-Length: counted while read
    assert httpx.get(server + "/nowhere").json()["error"]["message"]
    assert post(server, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
                ).json()["choices"][0]["finish_reason"] == "length"



def oversize(mib: int) -> bytes:
    return json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * (mib << 20)}]}).encode()


def assert_413(status: int, text: bytes | str) -> None:
    assert status == 413, (status, text[:300])
    error = json.loads(text)["error"]
    assert error["code"] == "request_too_large" and "limit of 3000000 bytes" in error["message"], error


def test_oversize_bodies_get_the_413_with_plain_clients_and_the_server_keeps_serving(server):
    """urllib writes the whole body before reading and sends `Connection: close`: a 413 sent before the body
    was read, then the close, reached it as a connection reset."""
    url = server + "/v1/chat/completions"
    ok = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode()
    for mib in (40, 100):
        request = urllib.request.Request(url, oversize(mib), {"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=60)
        assert_413(e.value.code, e.value.read())
    # http.client on one keep-alive connection: Content-Length, then chunked, then a normal request on it
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    big = oversize(40)
    for body in (big, (big[i:i + 65536] for i in range(0, len(big), 65536))):
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"},
                     encode_chunked=not isinstance(body, bytes))
        r = conn.getresponse()
        assert_413(r.status, r.read())
        assert r.getheader("connection") is None  # drained: the connection stays open
    conn.request("POST", "/v1/chat/completions", ok, {"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["choices"][0]["finish_reason"] == "length"
    conn.close()
    with urllib.request.urlopen(urllib.request.Request(url, ok, {"content-type": "application/json"}),
                                timeout=60) as r:
        assert r.status == 200


class Client:
    """An ASGI client for BodyLimit alone: `chunks` chunks of `size` bytes (or chunks sent forever every
    `delay` seconds), counting what the middleware read."""

    def __init__(self, size: int, chunks: int | None, delay: float = 0.0) -> None:
        self.size, self.chunks, self.delay = size, chunks, delay
        self.chunk = b"x" * size  # one object sent again and again: whatever memory grows is the middleware's
        self.read = 0
        self.sent: list[dict] = []
        self.app_body: bytes | None = None

    async def receive(self) -> dict:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.read += self.size
        more = self.chunks is None or self.read < self.chunks * self.size
        return {"type": "http.request", "body": self.chunk, "more_body": more}

    async def send(self, message: dict) -> None:
        self.sent.append({**message, "read": self.read})

    async def app(self, scope: dict, receive, send) -> None:
        self.app_body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def run(self, headers: dict[str, str], **bounds) -> tuple[int, dict[str, str], int]:
        """(status, response headers, bytes read before the response started)."""
        scope = {"type": "http", "method": "POST", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        asyncio.run(BodyLimit(self.app, 1 << 20, **bounds)(scope, self.receive, self.send))
        start = self.sent[0]
        return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, start["read"]


def test_body_limit_drains_an_oversize_body_in_bounded_memory_then_answers():
    mib = 1 << 20
    for headers in ({"content-length": str(100 * mib)}, {"transfer-encoding": "chunked"}):
        client = Client(64 * 1024, 1600)  # 100 MiB
        tracemalloc.start()
        status, response, read = client.run(headers)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert (status, read) == (413, 100 * mib) and "connection" not in response, headers  # all of it, then 413
        assert peak < 4 * mib, peak  # the limit's worth at most (chunked), never the body
        assert client.app_body is None
    status, response, read = Client(64 * 1024, 17).run({})  # over the limit in its last chunk: nothing left
    assert (status, read) == (413, 17 * 64 * 1024) and "connection" not in response
    # over the discard bound: declared, answered before reading; counted, answered once the bound is passed
    status, response, read = Client(64 * 1024, 1600).run({"content-length": str(100 * mib)}, discard=8 * mib)
    assert (status, response.get("connection"), read) == (413, "close", 0)
    status, response, read = Client(64 * 1024, None).run({}, discard=8 * mib)
    assert (status, response.get("connection")) == (413, "close") and 8 * mib < read <= 9 * mib
    # a client waiting for `100 Continue` is answered without being asked for the body
    status, response, read = Client(64 * 1024, 1600).run({"content-length": str(100 * mib), "expect": "100-continue"})
    assert (status, response.get("connection"), read) == (413, "close", 0)
    # a body that trickles in for ever: answered after discard_seconds
    t0 = time.perf_counter()
    status, response, read = Client(64 * 1024, None, delay=0.01).run({}, discard_seconds=0.3)
    assert (status, response.get("connection")) == (413, "close") and 0.25 < time.perf_counter() - t0 < 2
    # within the limit the app gets the body, declared or not
    for headers in ({"content-length": str(mib)}, {}):
        client = Client(mib // 4, 4)
        status, _, _ = client.run(headers)
        assert status == 200 and client.app_body == b"x" * mib


def test_model_ids_of_generic_checkpoint_folders(tmp_path):
    assert model_id(tmp_path / "InternVL3-1B") == "InternVL3-1B"
    assert model_id(tmp_path / "demo_out" / "sft" / "final") == "sft"
    assert model_id(tmp_path / "out" / "step-0000200") == "out-step-0000200"
    assert model_id(tmp_path / "run" / "checkpoint-500") == "run-checkpoint-500"
    assert model_id(tmp_path / "final-answer") == "final-answer"
    assert model_id(tmp_path / "models--OpenGVLab--InternVL3-1B" / "snapshots" / "0123abc") == "InternVL3-1B"
    assert model_id("/final") == "final"
    assert server_urls("0.0.0.0", 8000) == ("http://0.0.0.0:8000/v1", "http://0.0.0.0:8000/")
    assert server_urls("::1", 80) == ("http://[::1]:80/v1", "http://[::1]:80/")


def test_start_up_logs_the_model_id_and_urls_and_404_names_the_id(server, ckpt):
    log = (ckpt.parent / f"serve-{server.rsplit(':', 1)[1]}.log").read_text()
    assert f"serving model 'tiny' (the id clients send as \"model\"): API {server}/v1, chat page {server}/" in log
    r = post(server, {"model": "final", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and "this server serves 'tiny'" in r.json()["error"]["message"]


def wait_idle(server: str, seconds: float) -> dict:
    end = time.time() + seconds
    while time.time() < end:
        health = httpx.get(server + "/health").json()
        if health["running"] == 0 and health["waiting"] == 0:
            return health
        time.sleep(0.05)
    return health


def test_a_client_that_disconnects_frees_its_slot(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 3500}
    with httpx.stream("POST", server + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        for _ in r.iter_lines():
            if httpx.get(server + "/health").json()["running"]:
                break
    t0 = time.time()
    assert wait_idle(server, 10)["running"] == 0
    assert time.time() - t0 < 5  # 3500 tokens would take far longer
    with pytest.raises(httpx.ReadTimeout):  # not streamed: the server notices the closed connection too
        httpx.post(server + "/v1/chat/completions", json=body, timeout=1.0)
    assert wait_idle(server, 10)["running"] == 0


def test_requests_that_arrive_together_are_decoded_together(server, client, pipe):
    questions = [f"Question {i}: {'why ' * (3 * i)}?" for i in range(16)]
    before = httpx.get(server + "/health").json()

    def ask(i: int) -> str:
        time.sleep(0.01 * i)  # staggered: later prompts (longer and shorter) join a batch already decoding
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": questions[i]}],
                                              max_tokens=24).choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, range(16)))
    health = httpx.get(server + "/health").json()
    assert health["max_running"] >= 8 and health["prefills"] - before["prefills"] >= 2
    assert health["steps"] - before["steps"] < 16 * 24 / 2  # one at a time would take 16 x 24 steps
    assert got == [pipe(q, max_new_tokens=24) for q in questions]


def test_load_32_clients_for_20_seconds(server, pipe, ckpt):
    prompts = [(f"Load {i}", data_url(ckpt / "photo.png") if i % 3 == 0 else None) for i in range(8)]
    expected = [pipe(q, images=[ckpt / "photo.png"] if img else [], max_new_tokens=6) for q, img in prompts]
    done, failures, stop_at = [], [], time.time() + 20

    def worker(c: int) -> None:
        i = c
        while time.time() < stop_at:
            k = i % len(prompts)
            q, img = prompts[k]
            body = {"model": "tiny", "messages": [user(q, img) if img else {"role": "user", "content": q}],
                    "max_tokens": 6, "stream": c % 2 == 1}
            try:
                r = httpx.post(server + "/v1/chat/completions", json=body, timeout=60)
                if body["stream"]:
                    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
                    assert events[-1] == "[DONE]"
                    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                                   if json.loads(e)["choices"]).strip()
                else:
                    text = r.json()["choices"][0]["message"]["content"]
                assert r.status_code == 200 and text == expected[k], (r.status_code, text, expected[k])
                done.append(k)
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                failures.append(repr(e))
            i += 1

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(worker, range(32)))
    assert failures == []
    print(f"load test: {len(done)} answers to 32 clients in 20 s, none failed")
    assert len(done) > 64  # every client got several answers, all complete and correct


def test_remote_images_when_allowed_and_graceful_shutdown(ckpt, pipe, hits):
    proc, url = start_server(ckpt, "--graceful-timeout", "60", "--allow-remote-images", "--max-tiles", "6")
    port, fetched = hits
    remote = f"http://127.0.0.1:{port}/photo.png"
    got = post(url, {"model": "tiny", "messages": [user("What is it?", remote)], "max_tokens": 6}).json()
    assert got["choices"][0]["message"]["content"] == pipe("What is it?", images=[ckpt / "photo.png"],
                                                           max_new_tokens=6)
    assert fetched[-1] == "/photo.png"
    # graceful shutdown: a stream in flight when SIGTERM arrives still finishes
    body = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 400, "stream": True}
    lines = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            lines.append(line)
            if len(lines) == 6:
                proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert [x for x in lines if x][-1] == "data: [DONE]"
    finals = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert finals[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(len(f["choices"][0]["delta"].get("content") or "") > 0 for f in finals) > 50  # most of 400 tokens
    log = (ckpt.parent / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()
    assert "Waiting for connections to close" in log and "Application shutdown complete" in log
