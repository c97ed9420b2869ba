"""A warm container's wait for its run (`runner.host.pool`).

The container started before there was a run: no spec, no token, an empty workspace.
While it waits, what the agent needs is imported and its client's lazily loaded modules
are loaded (that is the start-up a cold run pays after its container starts); then the
host writes the run's `DELIVERY_FILE` atomically (a rename) into `DELIVERY_DIR`, once the
workspace is cloned and the run's gateway and proxy sockets are open. The file is read and
deleted at once, before the forwarder, the setup script or any tool runs, so nothing the
agent starts can read it; the token then lives only in this process's memory (it is
non-dumpable) and in the environment it gives the model's client.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from runner.contract import DELIVERY_DIR, DELIVERY_FILE, RunSpec, read_delivery

POLL_SECONDS = 0.005  # a stat every 5 ms: nothing measurable, and no inotify in stdlib


def preload() -> None:
    """Load what the first model call would otherwise load: the SDK client's resources
    and its HTTP stack (a throwaway client with a dummy key, never used to call)."""
    import anthropic

    client = anthropic.Anthropic(api_key="warm", base_url="http://127.0.0.1:9")
    _ = client.messages  # the `messages` resource and its types load on first access
    client.close()


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
