"""Loopback TCP ports for the host's Unix sockets, inside the container.

A run's container has no network (`--network none`): the host's model gateway and egress
proxy reach it only as Unix sockets in `SOCKET_DIR`. Programs expect a URL with a port
(the SDK's ANTHROPIC_BASE_URL, HTTP_PROXY), so for each socket present this listens on
127.0.0.1 and splices every connection to the socket, both ways. Standard library and
threads only; started by the agent before anything else runs.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

from runner.contract import FORWARDED_SOCKETS, SOCKET_DIR

CHUNK = 64 * 1024


def start(socket_dir: str = SOCKET_DIR,
          ports: dict[str, int] | None = None) -> dict[str, int]:
    """Listen for every socket present; returns socket name -> port now served."""
    served: dict[str, int] = {}
    for name, port in (FORWARDED_SOCKETS if ports is None else ports).items():
        path = Path(socket_dir) / name
        if not path.is_socket():
            continue
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        threading.Thread(target=_accept, args=(listener, str(path)), daemon=True,
                         name=f"forward-{name}").start()
        served[name] = port
    return served


def _accept(listener: socket.socket, path: str) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_connect, args=(client, path), daemon=True).start()


def _connect(client: socket.socket, path: str) -> None:
    """Each connection opens the socket anew: a restarted host serves the same path."""
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    """Copy until `source` ends, then end `target`'s sending side (half-close)."""
    try:
        while True:
            data = source.recv(CHUNK)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            source.shutdown(socket.SHUT_RD)
