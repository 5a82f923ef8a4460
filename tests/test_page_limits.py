"""The page's limits, driven by real HTTP requests on loopback (issue 21 part 2, docs/design.md §8.1).

A uvicorn server runs `web_app.create_app` in a thread around `RecordingDemo`,
which stands in for the checkpoint (no model to compile) and records every
call that reaches it: a request refused by the limits must never reach it.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time

import pytest

from keypatch_jax import serve, uploads, web_app

LIMIT_MB = 1


class RecordingDemo:
  """The part of `interactive.Demo` the app uses, recording what reaches it."""

  max_bytes = LIMIT_MB * uploads.MB
  max_patches = 6

  def __init__(self):
    self.calls: list[tuple] = []

  def info(self):
    return {"step": 0}

  def test_thumbnails(self):
    return ["thumb"]

  def add_photo(self, data, name):
    self.calls.append(("photo", len(data)))
    return {"image_id": "a" * 32}

  def add_patch(self, data, name):
    self.calls.append(("patch", len(data)))
    return {"patch_id": "b" * 32}

  def pick_test_image(self, index):
    self.calls.append(("pick", index))
    return {}

  def result(self, image_id, boxes, patch_ids, seed, order):
    self.calls.append(("generate", len(boxes), seed))
    return {"seed": seed}


@pytest.fixture(scope="module")
def page_server():
  import uvicorn

  demo = RecordingDemo()
  app = web_app.create_app(demo, serve.allowed_hosts("127.0.0.1", ["mybox.lan"]))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started:
    assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
    time.sleep(0.05)
  yield port, demo
  server.should_exit = True
  thread.join(timeout=10)


def _request(port, method, path, body=b"", headers=None, host=None):
  """(status, JSON or text body) of one request with a Content-Length."""
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
  conn.putrequest(method, path, skip_host=True)
  conn.putheader("Host", host or f"127.0.0.1:{port}")
  for k, v in (headers or {}).items():
    conn.putheader(k, v)
  conn.putheader("Content-Length", str(len(body)))
  if body:
    conn.putheader("Content-Type", "application/json")
  conn.endheaders(body)
  r = conn.getresponse()
  data = r.read()
  conn.close()
  try:
    return r.status, json.loads(data)
  except ValueError:
    return r.status, data.decode()


def _chunked(port, path, content_type, total, chunk=256 * 1024, prefix=b""):
  """Sends a chunked body of up to `total` bytes, stopping as soon as the server answers.

  Returns (status, body, bytes sent, seconds until the answer).
  """
  sock = socket.create_connection(("127.0.0.1", port), timeout=10)
  head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
  sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
  start, sent = time.perf_counter(), 0
  pieces = [prefix] if prefix else []
  while sent < total:
    if select.select([sock], [], [], 0)[0]:
      break  # the server has answered
    piece = pieces.pop() if pieces else b"0" * chunk
    try:
      sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
      break
    sent += len(piece)
  else:
    try:
      sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
      pass
  response = http.client.HTTPResponse(sock)
  response.begin()
  body = response.read()
  seconds = time.perf_counter() - start
  sock.close()
  return response.status, json.loads(body), sent, seconds


def test_a_chunked_upload_over_the_limit_is_413_while_it_is_read(page_server):
  port, demo = page_server
  prefix = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
  before = len(demo.calls)
  kind = "multipart/form-data; boundary=b"
  status, body, sent, seconds = _chunked(port, "/api/photo", kind, 300 * uploads.MB, prefix=prefix)
  assert status == 413 and "1 MB upload limit" in body["error"] and "\n" not in body["error"]
  assert sent < 8 * uploads.MB, f"the server read {sent / uploads.MB:.0f} MB before answering"
  assert seconds < 5 and len(demo.calls) == before


def test_a_chunked_json_body_over_the_limit_is_413(page_server):
  port, demo = page_server
  status, body, sent, _ = _chunked(port, "/api/generate", "application/json", 50 * uploads.MB, prefix=b'{"boxes": [')
  assert status == 413 and "KB limit" in body["error"]
  assert sent < 4 * uploads.MB and not [c for c in demo.calls if c[0] == "generate"]


@pytest.mark.parametrize(
  "request_body, expected",
  [
    ({"image_id": "a" * 32, "boxes": [[0, 0, 4, 4]] * 7}, "boxes: List should have at most 6 items"),
    ({"image_id": "a" * 32, "boxes": [[0, 0, 4]]}, "boxes.0: List should have at least 4 items"),
    ({"image_id": "a" * 32, "boxes": [[0, 0, 4, 4, 4]]}, "boxes.0: List should have at most 4 items"),
    ({"boxes": [[0, 0, "inf", 4]]}, "boxes.0.2: Input should be a finite number"),
    ({"seed": 99999999999999999999999}, "seed: Input should be less than or equal to 2147483647"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"order": [0, 9]}, "order.1: Input should be less than 6"),
    ({"patch_ids": ["x" * 1000]}, "patch_ids.0: String should have at most 64 characters"),
    ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
  ],
)
def test_bad_generate_requests_are_400_before_any_work(page_server, request_body, expected):
  port, demo = page_server
  before = len(demo.calls)
  status, body = _request(port, "POST", "/api/generate", json.dumps(request_body).encode())
  assert status == 400 and expected in body["error"] and "\n" not in body["error"], body
  assert len(demo.calls) == before


def test_forty_thousand_boxes_are_refused_at_once(page_server):
  port, demo = page_server
  body = json.dumps({"image_id": "a" * 32, "boxes": [[1.5, 2.5, 10.25, 12.75]] * 40_000}).encode()
  start = time.perf_counter()
  status, reply = _request(port, "POST", "/api/generate", body)
  assert status == 413 and time.perf_counter() - start < 2 and not [c for c in demo.calls if c[0] == "generate"]
  small = json.dumps({"image_id": "a" * 32, "boxes": [[1, 2, 3, 4]] * 6, "seed": 5}).encode()
  assert _request(port, "POST", "/api/generate", small) == (200, {"seed": 5})


@pytest.mark.parametrize("host", ["attacker.example.com", "attacker.example.com:80", "127.0.0.2", "[::2]"])
def test_foreign_host_names_are_refused(page_server, host):
  port, _ = page_server
  status, body = _request(port, "GET", "/api/test-images", host=host)
  assert status == 400 and "Invalid host header" in str(body)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "mybox.lan", "MyBox.lan"])
def test_loopback_and_allowed_host_names_are_served(page_server, host):
  port, _ = page_server
  assert _request(port, "GET", "/api/test-images", host=f"{host}:{port}") == (200, {"thumbnails": ["thumb"]})


@pytest.mark.parametrize(
  "headers",
  [
    {"Origin": "http://attacker.example.com"},
    {"Origin": "null"},
    {"Origin": "https://127.0.0.1:{port}"},
    {"Origin": "http://127.0.0.1:1"},
    {"Origin": "http://localhost:{port}"},  # another origin, though the same machine
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
  ],
)
def test_state_changing_requests_from_other_origins_are_403(page_server, headers):
  port, demo = page_server
  headers = {k: v.format(port=port) for k, v in headers.items()}
  before = len(demo.calls)
  for path, body in (("/api/generate", b"{}"), ("/api/test-images/0", b"")):
    status, reply = _request(port, "POST", path, body, headers=headers)
    assert status == 403 and "only this server's own page" in reply["error"]
  assert len(demo.calls) == before


@pytest.mark.parametrize(
  "headers",
  [{}, {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}],
)
def test_the_page_itself_and_programs_may_post(page_server, headers):
  port, _ = page_server
  headers = {k: v.format(port=port) for k, v in headers.items()}
  assert _request(port, "POST", "/api/generate", b'{"seed": 3}', headers=headers) == (200, {"seed": 3})


def test_allowed_hosts_and_the_exposure_line():
  assert serve.allowed_hosts("127.0.0.1", []) == ["localhost", "127.0.0.1", "[::1]"]
  assert serve.allowed_hosts("0.0.0.0", ["Box.lan"]) == ["localhost", "127.0.0.1", "[::1]", "box.lan"]
  assert serve.allowed_hosts("192.168.1.5", [])[-1] == "192.168.1.5"
  assert serve.allowed_hosts("fe80::1", [])[-1] == "[fe80::1]"
  assert serve.exposure_line("127.0.0.1", 8000, []) is None and serve.exposure_line("::1", 8000, []) is None
  line = serve.exposure_line("0.0.0.0", 8000, ["localhost", "box.lan"])
  assert "every network interface" in line and "box.lan" in line and "--allowed-host" in line and "\n" not in line
  with pytest.raises(SystemExit):
    serve.parse_args(["--workdir", "w", "--allowed-host", "http://x/"])
