"""Warm containers: started before there is a run, so a run skips the container's start.

A run's container costs a create, a start and the agent's own start-up (the interpreter,
the SDK's imports) before its first model call. The pool keeps `size` containers made and
started ahead, locked down exactly as a cold run's (`runner.host.hardening`), each waiting
(`runner.inside.warm`) for one run. Before it is given one, a warm container holds nothing
of any run: its environment has no key and no spec, its mounts are empty directories.

    warm-E-K/           its slot (E: its engine; the run's own filesystem when limited)
    warm-E-K/repo       empty; mounted at /workspace, the run's clone goes here
    warm-E-K/delivery   mounted at DELIVERY_DIR: the run's spec and token arrive here
    warm-E-K.sock/      mounted at SOCKET_DIR: the run's gateway and proxy sockets

Given a run (`take`, then the sandbox clones into the slot and opens the run's sockets),
the sockets' directory is renamed to the run's (`run-N.sock`), the run's directory becomes a
link to the slot (`workspace.prepare(into=...)`), the host notes the token's hash and the
time in the slot (`ASSIGNED_FILE`, never mounted), delivers the spec and token, and
renames the container to the run's name: from then on it is the run's container, found,
followed, adopted, killed and removed as any other (labels cannot change: the run's id is
read from the name, the token's hash from the slot). Each container takes exactly one run.

The pool refills in the background, is emptied and held while the bot says so (the kill
switch), and is rebuilt when its fingerprint (the image's id and the container settings)
changes: every warm container carries it as a label, and one that does not match is removed
at start and whenever the image changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests.exceptions

from runner.contract import (
    DELIVERY_DIR,
    DELIVERY_FILE,
    LABEL_INSTANCE,
    LABEL_POOL,
    LABEL_TOKEN_SHA256,
    LABEL_WORKER,
    LOADED_FILE,
    SOCKET_DIR,
    WARM_ENV,
    WORKSPACE,
    Engine,
    RunSpec,
    delivery_json,
)
from runner.errors import WorkspaceError
from runner.host import disk, hardening

if TYPE_CHECKING:
    from runner.host.sandbox import SandboxConfig

log = logging.getLogger(__name__)

ASSIGNED_FILE = "assigned.json"  # in the slot, host-only: the token's hash, when given
CHECK_SECONDS = 2.0  # how often the image and the hold are looked at
REFILL_DELAY = 0.5  # after a take: the run just given starts before a new one is made
FINGERPRINT_VERSION = "1"  # bumped when what a warm container is changes
DockerErrors = (docker.errors.DockerException, requests.exceptions.RequestException)


@dataclass
class WarmSlot:
    """One warm container and its directories, not yet given a run."""

    key: str
    container: Any
    directory: Path  # the run's directory once given (`workspace.prepare(into=...)`)
    sockets: Path

    def loaded(self) -> bool:
        """Whether its agent has loaded everything and waits (`runner.inside.warm`)."""
        return (self.directory / "delivery" / LOADED_FILE).exists()


class WarmPool:
    """`size` warm containers of one engine's image, refilled in the background."""

    def __init__(self, client: docker.DockerClient, config: SandboxConfig, size: int,
                 engine: str = Engine.BUILTIN, held: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.config = config
        self.size = size
        self.engine = engine  # its containers are of this engine's image, for its runs
        self.image = config.claude_code_image if engine == Engine.CLAUDE_CODE else config.image
        self._slot_prefix = f"warm-{engine}-"
        self.held = held  # True: keep the pool empty (the kill switch is engaged)
        self._ready: list[WarmSlot] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._drained = False
        self._fingerprint: str | None = None
        self._thread: threading.Thread | None = None
        self._taken_at = 0.0

    # -- lifetime ---------------------------------------------------------------------

    def start(self) -> None:
        """Remove what an earlier process left (warm containers that are stale or no longer
        followed, slots of no run), then fill the pool in the background. An engine that
        does not answer now is tried again by the refill (the bot starts all the same)."""
        try:
            self._fingerprint = self.fingerprint()
            self._sweep()
        except DockerErrors as exc:
            log.warning("warm pool: the engine did not answer at start (%s)", exc)
        self._thread = threading.Thread(target=self._refill_loop, daemon=True,
                                        name="warm-pool")
        self._thread.start()

    def close(self) -> None:
        """Stop refilling and remove every warm container not given a run."""
        self.stop_refilling()
        self._remove_ready()

    def stop_refilling(self) -> None:
        """End the background refill (what is ready stays: `close` removes it)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def drain(self) -> None:
        """From now on give no warm container and make none until `resume`; the ones
        waiting are removed at once, in the background (this returns without waiting)."""
        self._drained = True
        self._wake.set()

    def resume(self) -> None:
        self._drained = False
        self._wake.set()

    def ready(self) -> int:
        """How many warm containers wait for a run now."""
        with self._lock:
            return len(self._ready)

    # -- giving a run -----------------------------------------------------------------

    def take(self, engine: str) -> WarmSlot | None:
        """A warm container for a run of `engine`, never given to another; None when the
        pool has none (the run starts cold). The image is looked at again first: a run
        never starts from an image that was replaced since its container was made. Only a
        container whose agent said it has loaded and waits is given (one of an image too
        old to wait for a run never says so: every run then starts cold)."""
        if engine != self.engine or self._drained:
            return None
        try:
            current = self.fingerprint()
        except DockerErrors:
            return None  # the cold start says what is wrong with the engine
        with self._lock:
            if current != self._fingerprint:
                stale, self._ready = self._ready, []
            else:
                stale, slot = [], self._pop_loaded()
        if stale:
            self._wake.set()
            for old in stale:
                self.discard(old)
            return None
        if slot is None:
            return None
        self._taken_at = time.monotonic()
        self._wake.set()
        try:
            slot.container.reload()
            running = slot.container.status == "running"
        except DockerErrors:
            running = False
        if not running:  # it ended while it waited (killed from outside, out of memory)
            self.discard(slot)
            return None
        return slot

    def _pop_loaded(self) -> WarmSlot | None:
        """Under the lock: the oldest loaded slot, out of the ready list."""
        for slot in self._ready:
            if slot.loaded():
                self._ready.remove(slot)
                return slot
        return None

    def loaded(self) -> int:
        """How many warm containers wait with their agent loaded."""
        with self._lock:
            return sum(1 for slot in self._ready if slot.loaded())

    def deliver(self, slot: WarmSlot, spec: RunSpec, token: str, token_hash: str,
                name: str) -> Any:
        """Give `slot` its run: note the token's hash (host-side), write the spec and token
        into its delivery directory atomically, and rename its container `name`. Call it
        once the workspace is cloned into the slot and the run's sockets are open."""
        try:
            (slot.directory / ASSIGNED_FILE).write_text(json.dumps(
                {"token_sha256": token_hash, "assigned_at": time.time(),
                 "run_id": spec.run_id}))
            write_delivery(slot.directory / "delivery",
                           delivery_json(spec.for_container(), token))
        except OSError as exc:
            raise WorkspaceError(f"could not give the run a warm container: {exc}") from exc
        slot.container.rename(name)
        return slot.container

    def discard(self, slot: WarmSlot) -> None:
        """Remove a warm container and its directories (a run could not be given to it)."""
        with contextlib.suppress(*DockerErrors):
            slot.container.remove(force=True)
        remove_slot(slot.directory, slot.sockets)

    # -- the fingerprint ----------------------------------------------------------------

    def fingerprint(self) -> str | None:
        """What a warm container must match to be used: the image's id (None when the
        image is missing) and every setting the container is made with."""
        try:
            image_id = str(self.client.images.get(self.image).id) if self.image else ""
        except docker.errors.ImageNotFound:
            return None
        if not image_id:
            return None
        cfg = self.config
        parts = [FINGERPRINT_VERSION, self.engine, image_id, cfg.instance, cfg.memory,
                 str(cfg.cpus), str(cfg.pids), cfg.runtime, str(cfg.disk_limit),
                 cfg.log_file_size, str(cfg.log_files), hardening.container_user()]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    # -- the background -----------------------------------------------------------------

    def _refill_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._refill()
            except DockerErrors as exc:
                log.warning("warm pool: could not refill (%s); trying again", exc)
            except Exception:  # the database behind `held`, a bug: never the end of it
                log.exception("warm pool: could not refill; trying again")
            self._wake.wait(CHECK_SECONDS)
            self._wake.clear()

    def _refill(self) -> None:
        if self._drained or self.held():
            self._remove_ready()
            return
        current = self.fingerprint()
        if current != self._fingerprint:
            log.info("warm pool: image or settings changed, rebuilding")
            self._fingerprint = current
            self._remove_ready()
        while current is not None and self.ready() < self.size:
            wait = self._taken_at + REFILL_DELAY - time.monotonic()
            if wait > 0:
                self._stopping.wait(wait)
            if self._stopping.is_set() or self._drained:
                return
            slot = self._make(current)
            with self._lock:
                kept = self._fingerprint == current and not self._drained
                if kept:
                    self._ready.append(slot)
            if not kept:  # changed or drained meanwhile
                self.discard(slot)

    def _make(self, fingerprint: str) -> WarmSlot:
        """One warm container: its empty directories, then the container, started."""
        cfg = self.config
        key = secrets.token_hex(8)
        directory = cfg.workspace_root / f"{self._slot_prefix}{key}"
        sockets = cfg.workspace_root / f"{self._slot_prefix}{key}.sock"
        cfg.workspace_root.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir()
            sockets.mkdir()
            if cfg.disk_limit:
                disk.mount_limited(directory, cfg.disk_limit)
            # `repo` stays the host's until the clone is in it (host git refuses a
            # repository another user owns); the clone then hands it to the sandbox user.
            (directory / "repo").mkdir(mode=0o700)
            (directory / "delivery").mkdir(mode=0o700)
            if os.geteuid() == 0:
                os.chown(directory / "delivery", hardening.SANDBOX_UID, hardening.SANDBOX_UID)
            container = hardening.create(
                self.client, cfg, image=self.image, name=self.warm_name(key),
                labels={**owner_labels(cfg), LABEL_POOL: fingerprint},
                environment={WARM_ENV: "1", **hardening.network_env()},
                volumes={str(directory / "repo"): {"bind": WORKSPACE, "mode": "rw"},
                         str(directory / "delivery"): {"bind": DELIVERY_DIR, "mode": "rw"},
                         str(sockets): {"bind": SOCKET_DIR, "mode": "ro"}})
        except BaseException:
            remove_slot(directory, sockets)
            raise
        slot = WarmSlot(key, container, directory, sockets)
        try:
            container.start()
        except BaseException:
            self.discard(slot)
            raise
        return slot

    def warm_name(self, key: str) -> str:
        return f"routines-{self.config.instance}-{self._slot_prefix}{worker_slug(self.config)}{key}"

    def _remove_ready(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for slot in ready:
            self.discard(slot)

    def _sweep(self) -> None:
        """At start: every warm container of this instance not given a run is removed (an
        earlier process made it: it is followed by no one, and may be stale), then every
        slot no run's directory links to."""
        prefix = self.warm_name("")
        for container in self.client.containers.list(all=True, filters={"label": [
                *owner_filter(self.config), LABEL_POOL]}):
            if container.name.startswith(prefix):
                log.info("warm pool: removing leftover warm container %s", container.name)
                with contextlib.suppress(*DockerErrors):
                    container.remove(force=True)
        root = self.config.workspace_root
        if not root.is_dir():
            return
        linked = {path.resolve().name for path in root.glob("run-*") if path.is_symlink()}
        slot = re.compile(rf"{re.escape(self._slot_prefix)}[0-9a-f]{{16}}")
        for path in root.glob(f"{self._slot_prefix}*"):
            name = path.name.removesuffix(".sock")
            if slot.fullmatch(name) and name not in linked:
                remove_slot(path, None)


def token_hash(container: Any, root: Path, run_id: int) -> str:
    """The run token's hash for a container's gateway: its label (a cold run's), or what
    the host noted in the run's slot when it was given a warm container."""
    label = str(container.labels.get(LABEL_TOKEN_SHA256, ""))
    if label or LABEL_POOL not in container.labels:
        return label
    return str(_assigned(root, run_id).get("token_sha256", ""))


def assigned_at(root: Path, run_id: int) -> float | None:
    """When a warm container was given the run (its own start was earlier); None for a
    cold run."""
    value = _assigned(root, run_id).get("assigned_at")
    return float(value) if isinstance(value, int | float) else None


def _assigned(root: Path, run_id: int) -> dict[str, Any]:
    try:
        data = json.loads((root / f"run-{run_id}" / ASSIGNED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_delivery(directory: Path, text: str) -> None:
    """`DELIVERY_FILE` in `directory`, whole or not at all: written beside it (never through
    a link: O_NOFOLLOW, O_EXCL), readable by the sandbox user only, then renamed."""
    temporary = directory / f".{DELIVERY_FILE}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    with os.fdopen(fd, "w") as file:
        if os.geteuid() == 0:
            os.fchown(fd, hardening.SANDBOX_UID, hardening.SANDBOX_UID)
        file.write(text)
    os.rename(temporary, directory / DELIVERY_FILE)


def remove_slot(directory: Path, sockets: Path | None) -> None:
    """A slot's directories (its filesystem unmounted first): nothing there is fine."""
    if not directory.name.endswith(".sock"):
        disk.unmount(directory)
    shutil.rmtree(directory, ignore_errors=True)
    if sockets is not None:
        shutil.rmtree(sockets, ignore_errors=True)


def claim_sockets(slot: WarmSlot, path: Path) -> None:
    """Make the slot's sockets' directory (mounted in its container) the run's."""
    try:
        shutil.rmtree(path, ignore_errors=True)  # a leftover of an earlier process
        slot.sockets.rename(path)
    except OSError as exc:
        raise WorkspaceError(f"could not give the run a warm container: {exc}") from exc
    slot.sockets = path


def owner_labels(config: SandboxConfig) -> dict[str, str]:
    """The labels naming who owns a container: the deployment, and the worker if any."""
    labels = {LABEL_INSTANCE: config.instance}
    if config.worker:
        labels[LABEL_WORKER] = config.worker
    return labels


def owner_filter(config: SandboxConfig) -> list[str]:
    """The engine's label filter for the containers `owner_labels` marked."""
    return [f"{key}={value}" for key, value in owner_labels(config).items()]


def worker_slug(config: SandboxConfig) -> str:
    """The worker in a warm container's name ("" for none): two workers on one engine
    never pick the same name, nor sweep each other's by its prefix."""
    if not config.worker:
        return ""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", config.worker) + "-"


def given_containers(client: docker.DockerClient, config: SandboxConfig) -> dict[int, Any]:
    """This owner's warm containers given a run, by run id (read from the name the
    container took: its labels were fixed before it had a run)."""
    pattern = re.compile(rf"routines-{re.escape(config.instance)}-run-(\d+)")
    found: dict[int, Any] = {}
    for container in client.containers.list(all=True, filters={"label": [
            *owner_filter(config), LABEL_POOL]}):
        match = pattern.fullmatch(container.name)
        if match:
            found[int(match.group(1))] = container
    return found
