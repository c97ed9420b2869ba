"""A warm container's wait for its run (`runner.host.pool`).

The container started before there was a run: no spec, no token, an empty workspace.
While it waits, what the agent needs is imported and loaded by one whole model call to a
canned answer on loopback (that is the start-up a cold run pays after its container
starts), and `LOADED_FILE` says so; then the
host writes the run's `DELIVERY_FILE` atomically (a rename) into `DELIVERY_DIR`, once the
workspace is cloned and the run's gateway and proxy sockets are open. The file is read and
deleted at once, before the forwarder, the setup script or any tool runs, so nothing the
agent starts can read it; the token then lives only in this process's memory (it is
non-dumpable) and in the environment it gives the model's client.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import anthropic

from runner.contract import DELIVERY_DIR, DELIVERY_FILE, LOADED_FILE, RunSpec, read_delivery

POLL_SECONDS = 0.005  # a stat every 5 ms: nothing measurable, and no inotify in stdlib


def preload(tools: list[dict[str, Any]]) -> anthropic.DefaultHttpxClient:
    """Make one whole Messages call on loopback, to a canned answer served here: every
    module, schema and validator the first real call would load is loaded now (the SDK
    builds most of them lazily), with a throwaway client and a dummy key. Returns the HTTP
    client it used (its TLS context is costly to make), for the run's own model client."""
    http_client = anthropic.DefaultHttpxClient()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CannedMessage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = anthropic.Anthropic(api_key="warm", max_retries=0, http_client=http_client,
                                     base_url=f"http://127.0.0.1:{server.server_port}")
        with contextlib.suppress(anthropic.APIError):
            client.messages.create(
                model="warm", max_tokens=1, tools=tools,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": "warm"}])
    finally:
        server.shutdown()
        server.server_close()
    (Path(DELIVERY_DIR) / LOADED_FILE).touch()  # the host prefers loaded containers
    return http_client


class _CannedMessage(http.server.BaseHTTPRequestHandler):
    BODY = json.dumps({"id": "msg_warm", "type": "message", "role": "assistant",
                       "model": "warm", "content": [{"type": "text", "text": "warm"}],
                       "stop_reason": "end_turn", "stop_sequence": None,
                       "usage": {"input_tokens": 1, "output_tokens": 1}}).encode()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: stdout and stderr are the run's."""


def wait_for_run(directory: str = DELIVERY_DIR) -> tuple[RunSpec, str]:
    """Block until the host delivers the run; return its spec and token, the file gone."""
    path = Path(directory) / DELIVERY_FILE
    while True:
        try:
            raw = path.read_text()
        except FileNotFoundError:
            time.sleep(POLL_SECONDS)
            continue
        os.unlink(path)
        return read_delivery(raw)
