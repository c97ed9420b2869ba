"""Unix sockets for the servers a run reaches from its container (gateway, egress proxy)."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def listen_unix(path: Path) -> socket.socket:
    """A listening Unix socket at `path` that the sandbox user can connect to.

    Bound through `/proc/self/fd/N/`, so the path may be longer than the 108 bytes a
    socket address holds (workspace roots can be deep)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)  # noqa: S103 - the sandbox user must reach the socket
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a previous bot process's socket (adoption)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            sock.bind(f"/proc/self/fd/{folder}/{path.name}")
        finally:
            os.close(folder)
        os.chmod(path, 0o666)  # noqa: S103 - uid 10001 inside connects; the token guards it
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
