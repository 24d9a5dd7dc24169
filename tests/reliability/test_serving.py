"""The served model under load and under fuzzing (RELIABILITY.md 26, 27): ``mlflow models serve``
on loopback, a fixed count of single-image requests from 4 client threads, then
hypothesis-generated request bodies. Figures (p50/p99, requests/s, memory) are printed, and
recorded in docs/benchmarks.md."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from base64 import b64encode

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.registry_support import NAME, invoke, post, served_model
from thawline.data.store import load_split
from thawline.stages.register import png_bytes

CLIENTS, LOAD_DEADLINE_S = 4, 120
FUZZ_EXAMPLES = 100


@pytest.fixture(scope="module")
def server(registry_pipeline, registry_scenario, tmp_path_factory):
    """The registered champion, served once for this module's tests."""
    cfg = registry_pipeline.cfg
    test = load_split(cfg.paths.prepared, "test")
    images = [b64encode(png_bytes(test.images[i])).decode() for i in range(64)]
    folder = tmp_path_factory.mktemp("served")
    with served_model(f"models:/{NAME}@champion", cfg.tracking.uri, folder) as (base, process):
        status, body = invoke(base, images)
        assert status == 200, body
        yield base, process, images, [row["label"] for row in body["predictions"]]


def send(base: str, body: bytes, timeout: float = 60) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"{base}/invocations", body,
                                     {"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text


def one_image(image: str) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image]]}}).encode()


def memory(process: psutil.Process) -> int:
    """Resident memory of the server and its workers."""
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just exited
            total += proc.memory_info().rss
    return total


# The fast suite sends 500 requests; the figures in docs/benchmarks.md are the slow run's 2,000.
@pytest.mark.parametrize("requests", [500, pytest.param(2000, marks=pytest.mark.slow)])
def test_bounded_load_gets_no_5xx_and_steady_memory(server, requests):
    base, popen, images, labels = server
    watched = psutil.Process(popen.pid)
    latencies, statuses, rss = [], [], {}
    lock, issued = threading.Lock(), iter(range(requests))
    deadline = time.monotonic() + LOAD_DEADLINE_S

    def client() -> None:
        for n in issued:  # shared: each request number is taken once, by one thread
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            status, body = send(base, one_image(images[n % len(images)]))
            took = time.perf_counter() - started
            right = status == 200 and body["predictions"][0]["label"] == labels[n % len(images)]
            with lock:
                latencies.append(took)
                statuses.append(status if right or status != 200 else "wrong")
                done = len(statuses)
                if done in (requests // 4, requests):  # end of the first, last quarter
                    rss[done] = memory(watched)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    assert len(statuses) == requests, f"{len(statuses)} answered in {LOAD_DEADLINE_S} s"
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    first, last = rss[requests // 4], rss[requests]
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[math.ceil(0.99 * len(ordered)) - 1]
    print(f"\nserved: {requests} requests from {CLIENTS} threads in {seconds:.1f} s: "
          f"{requests / seconds:.1f} requests/s, p50 {p50 * 1e3:.1f} ms, p99 "
          f"{p99 * 1e3:.1f} ms; RSS {first / 2**20:.0f} -> {last / 2**20:.0f} MiB")  # fmt: skip
    assert last < 1.10 * first, (first, last)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` and whose data is one empty chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))  # fmt: skip


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)  # fmt: skip
b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
cells = st.one_of(
    st.binary(max_size=300).map(b64),
    st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)).map(
        lambda wh: b64(png_header(*wh))),
    st.lists(st.lists(st.floats(), min_size=1, max_size=4), min_size=1, max_size=4),
    st.lists(st.sampled_from([math.nan, math.inf, -math.inf, 0.5]), min_size=1, max_size=9),
    json_values,
)  # fmt: skip


@st.composite
def bodies(draw) -> bytes:
    """A request body: random JSON, the served format with odd cells or columns, many rows, or
    bytes that are not JSON at all."""
    how = draw(st.sampled_from(["json", "cells", "columns", "rows", "bytes", "inputs"]))
    if how == "json":
        return json.dumps(draw(json_values)).encode()
    if how == "bytes":
        return draw(st.binary(max_size=500))
    if how == "columns":
        column = draw(st.text(max_size=10).filter(lambda c: c != "image"))
        return json.dumps({"dataframe_split": {"columns": [column], "data": [["x"]]}}).encode()
    if how == "inputs":
        return json.dumps({"inputs": {"image": draw(st.lists(cells, max_size=3))}}).encode()
    count = 10_000 if how == "rows" else draw(st.integers(1, 3))
    rows = [[draw(cells)]] * count
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


@settings(deadline=None, max_examples=FUZZ_EXAMPLES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(body=bodies())
def test_fuzzed_requests_get_4xx_with_a_message_and_the_server_stays_up(server, body):
    base, popen, _, _ = server
    status, answer = send(base, body)
    assert status < 500, (status, answer, body[:300])
    if status >= 400:
        message = answer.get("message", "") if isinstance(answer, dict) else answer
        assert message and len(message) < 2000 and " object at 0x" not in message, answer
    else:  # a body the model can answer: one prediction per row
        assert isinstance(answer, dict) and answer["predictions"], answer
    assert popen.poll() is None


def test_after_fuzzing_a_normal_request_still_answers_correctly(server):
    base, _, images, labels = server
    status, body = invoke(base, images)
    assert status == 200 and [row["label"] for row in body["predictions"]] == labels


def test_the_served_model_takes_a_tta_param_and_refuses_a_bad_one(server):
    base, _, images, labels = server
    table = {"columns": ["image"], "data": [[i] for i in images]}
    status, body = post(base, {"dataframe_split": table, "params": {"tta": "flip"}})
    assert status == 200 and len(body["predictions"]) == len(images)
    answers = [row["label"] for row in body["predictions"]]
    agree = sum(a == b for a, b in zip(answers, labels, strict=True))
    assert agree >= 0.8 * len(images)  # the mirror is a second opinion, not another model
    status, body = post(base, {"dataframe_split": table, "params": {"tta": "flop"}})
    assert status == 400 and "'flop'" in body["message"] and "flip_shift" in body["message"]


@pytest.mark.slow
def test_a_10000_row_request_of_real_images_gets_a_correct_answer(server):
    base, _, images, labels = server
    started = time.perf_counter()
    status, body = invoke(base, images[:1] * 10_000)  # a 10,000-row request of real images
    print(f"\n10,000 rows answered in {time.perf_counter() - started:.1f} s")
    assert status == 200 and len(body["predictions"]) == 10_000
    assert {row["label"] for row in body["predictions"]} == {labels[0]}
