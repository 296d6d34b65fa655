"""`soe serve` under hostile or unlucky clients: slow senders are cut off, labels always match vectors.

* A client that sends part of its headers, or ``Content-Length: 100`` and then 10 bytes, must not
  hold a connection: the real server (uvicorn, as `soe serve` builds it, on a free port) closes it
  within ``serve.header_timeout_s`` / ``serve.body_timeout_s``.
* While the current-model pointer switches every few milliseconds between two models whose vectors
  and neighbour lists tell them apart, every response's ``model_version`` matches its data.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from store import format as fmt
from store.backends import open_store
from store.service.app import create_app

USERS = np.arange(1, 41, dtype=np.int64)
SIGN = {"m1": 1.0, "m2": -1.0}  # m1's vectors are +e1, m2's -e1
SHIFT = {"m1": 1, "m2": 2}  # m1's neighbour list of user u is [u + 1], m2's [u + 2]


def two_models(store):
    for model in ("m1", "m2"):
        store.ensure_model(model, 4, "float32", 16)
        x = np.zeros((len(USERS), 4), np.float32)
        x[:, 0] = SIGN[model]
        store.upsert_vectors(model, USERS, fmt.encode_vectors(x, 1_000, model, "float32"), 1_000)
        lists = [fmt.encode_neighbours([u + SHIFT[model]], [0.5], 1_000, model) for u in USERS.tolist()]
        store.upsert_neighbours(model, USERS, lists, 1_000)
        store.record_manifest(model, "t/00000", {"rows": len(USERS)})
    store.switch_pointer("m1")


@pytest.mark.parametrize("backend", ["memory", "single"])
def test_every_response_label_matches_its_vectors_while_the_pointer_switches(settings, backend, request):
    redis = request.getfixturevalue(f"redis_{backend}").model_copy(update={"pointer_ttl_s": 0.0})
    s = settings.model_copy(update={"redis": redis})
    store = open_store(redis)
    two_models(store)
    app = create_app(s.serve, s.graph, s.redis, s.layout())
    stop = threading.Event()
    seen: dict[str, int] = {"m1": 0, "m2": 0}
    wrong: list[str] = []
    errors: list[BaseException] = []

    def switcher():
        flip = 0
        while not stop.is_set():
            store.switch_pointer(("m2", "m1")[flip])
            flip ^= 1
            time.sleep(0.002)

    def requester(k: int):
        try:
            with TestClient(app) as client:
                while not stop.is_set():
                    body = client.post("/v1/vectors", json={"user_ids": USERS[:20].tolist()}).json()
                    model = body["model_version"]
                    seen[model] += 1
                    if any(v[0] != SIGN[model] for v in body["vectors"]):
                        wrong.append(f"/v1/vectors labelled {model}")
                    uid = int(USERS[k])
                    one = client.get(f"/v1/users/{uid}/vector").json()
                    if one["vector"][0] != SIGN[one["model_version"]]:
                        wrong.append(f"/vector labelled {one['model_version']}")
                    nb = client.get(f"/v1/users/{uid}/neighbours").json()
                    if [n["user_id"] for n in nb["neighbours"]] != [uid + SHIFT[nb["model_version"]]]:
                        wrong.append(f"/neighbours labelled {nb['model_version']}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=switcher)] + [
        threading.Thread(target=requester, args=(k,)) for k in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert seen["m1"] and seen["m2"], seen  # both models were served
    assert not wrong, f"{len(wrong)} mislabelled responses, e.g. {wrong[:3]}"


# -- slow clients ---------------------------------------------------------------------------------
@pytest.fixture(params=["httptools", "h11"])
def live_server(request, settings, redis_memory):
    """`soe serve`'s server (store.service.server.make_server) in a thread on a free port, short timeouts."""
    from store.local_server import free_ports
    from store.service.server import make_server

    serve = settings.serve.model_copy(
        update={"header_timeout_s": 0.5, "body_timeout_s": 0.5, "http": request.param}
    )
    app = create_app(serve, settings.graph, redis_memory, settings.layout())
    port = free_ports(1)[0]
    server = make_server(app, serve, port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(10)


def answer_and_close(port: int, payload: bytes, wait: float = 5.0) -> tuple[bytes, float | None]:
    """Send ``payload`` and read until the server closes: (what came back, seconds until closed, or
    None when it was still open after ``wait``)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(payload)
        sock.settimeout(wait)
        t0, data = time.monotonic(), b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except TimeoutError:
            return data, None
        except ConnectionResetError:
            pass
        return data, time.monotonic() - t0


def test_a_body_that_never_arrives_gets_408_and_a_closed_connection(live_server):
    head = (
        b"POST /v1/vectors HTTP/1.1\r\nHost: soe\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    data, closed_after = answer_and_close(live_server, head + b'{"user_ids')
    assert closed_after is not None and closed_after < 3.0, "the server kept the connection open"
    assert data.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in data


def test_headers_that_never_end_close_the_connection(live_server):
    data, closed_after = answer_and_close(live_server, b"GET /health HTTP/1.1\r\nHost: soe\r\n")
    assert closed_after is not None and closed_after < 3.0, "the server kept the connection open"
    assert data == b""


def test_a_complete_request_then_a_stalled_one_on_the_same_connection(live_server):
    ok = b"GET /health HTTP/1.1\r\nHost: soe\r\n\r\n"
    data, closed_after = answer_and_close(live_server, ok + b"GET /health HTTP/1.1\r\nHo")
    assert data.startswith(b"HTTP/1.1 200") and data.count(b"HTTP/1.1") == 1
    assert closed_after is not None and closed_after < 3.0
    # a slow but timely body is served (the timeout is the request's, not a whole connection's)
    with socket.create_connection(("127.0.0.1", live_server)) as sock:
        body = b'{"user_ids": [1]}'
        sock.sendall(
            b"POST /v1/vectors HTTP/1.1\r\nHost: soe\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:5]
        )
        time.sleep(0.2)
        sock.sendall(body[5:])
        sock.settimeout(5)
        assert sock.recv(4096).split(b"\r\n")[0] in (b"HTTP/1.1 503 Service Unavailable", b"HTTP/1.1 200 OK")
