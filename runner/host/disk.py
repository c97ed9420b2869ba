"""A run's own filesystem, so that its disk use has a bound the host enforces.

Without one, a run's workspace is a directory on the host's disk and one run can fill
it. With a limit, the run's directory is a filesystem of its own: a sparse file of the
limit's size beside it (`run-N.img`), formatted ext4 and loop-mounted on the directory
(`nosuid,nodev`) before anything is cloned into it. Everything the run's files take, the
clone, the agent's writes and the host's own git work on them, comes out of that file,
which never grows past the limit: the host's free space falls by no more than it. The
agent sees `No space left on device` when it is full.

Two things make the agent's share a little smaller than the limit: ext4's own metadata
(no journal: the filesystem lives as long as the run), and the blocks ext4 keeps for
root (5%), which the agent (uid 10001) cannot use and the host can: staging the run's
work to read its diff back still works when the agent filled the rest.

Mounting needs root and loop devices. Without them the run does not start
(`DiskLimitUnavailable`, naming the setting that turns the limit off), never silently
unlimited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from runner.errors import DiskLimitUnavailable

ROOT_RESERVED_PERCENT = "5"
# Full: less than this much is left for the agent (or no inode at all). A write that
# fails with ENOSPC can leave a few blocks free; 1% of the limit covers any block size.
MIN_FREE_BYTES = 1024**2
COMMAND_TIMEOUT = 120


def image_path(run_dir: Path) -> Path:
    """Where the run's filesystem lives: beside the directory it is mounted on."""
    return run_dir.with_name(f"{run_dir.name}.img")


def mount_limited(run_dir: Path, limit: int) -> None:
    """Make `run_dir` (an existing, empty directory) a filesystem of `limit` bytes.

    Raises `DiskLimitUnavailable` when this host cannot do it; nothing is left behind."""
    if os.geteuid() != 0:
        raise DiskLimitUnavailable(limit, "the bot is not running as root, and mounting "
                                          "the run's filesystem needs root")
    mkfs = shutil.which("mkfs.ext4")
    if mkfs is None:
        raise DiskLimitUnavailable(limit, "mkfs.ext4 not found (install e2fsprogs)")
    image = image_path(run_dir)
    try:
        image.unlink(missing_ok=True)
        with image.open("xb") as file:
            os.ftruncate(file.fileno(), limit)  # sparse: takes space only as it is used
        _run(limit, mkfs, "-q", "-F", "-O", "^has_journal", "-m", ROOT_RESERVED_PERCENT,
             str(image))
        _run(limit, "mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noatime", str(image),
             str(run_dir))
    except BaseException:
        image.unlink(missing_ok=True)
        raise


def unmount(run_dir: Path) -> None:
    """Unmount the run's filesystem (if mounted) and delete its file: its space returns to
    the host. Lazily if something still holds it: the space then returns when that ends."""
    if os.path.ismount(run_dir) and _unmount("umount", str(run_dir)).returncode != 0:
        _unmount("umount", "--lazy", str(run_dir))
    image_path(run_dir).unlink(missing_ok=True)


def limit_reached(run_dir: Path) -> int | None:
    """The run's limit in bytes if its filesystem is full (for the agent); None if it is
    not, or the run has none."""
    if not os.path.ismount(run_dir):
        return None
    try:
        limit = image_path(run_dir).stat().st_size
        stat = os.statvfs(run_dir)
    except OSError:
        return None
    free = stat.f_bavail * stat.f_frsize
    full = free < max(MIN_FREE_BYTES, limit // 100) or stat.f_favail == 0
    return limit if full else None


def _run(limit: int, *cmd: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskLimitUnavailable(limit, f"{Path(cmd[0]).name}: {exc}") from exc
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip().replace("\n", " ")[:300]
        raise DiskLimitUnavailable(limit, f"{Path(cmd[0]).name} exited with "
                                          f"{proc.returncode}: {stderr}")


def _unmount(*cmd: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 1, b"", str(exc).encode())
