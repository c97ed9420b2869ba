"""A run's own filesystem (`runner.host.disk`), with real mounts and real git: made before
the clone, holding everything of the run, full when the run fills it, gone with the
workspace, and never skipped silently when it cannot be made. The run in a real
container: tests/acceptance/test_disk_limit.py."""

from __future__ import annotations

import os
from pathlib import Path

import git
import pytest

from runner.host import disk, workspace
from tests.standins.environment import LOCAL_REPOS, make_git_repo

LIMIT = 32 * 1024**2


def prepare(tmp_path: Path, run_id: int, url: str, limit: int = LIMIT) -> Path:
    return workspace.prepare(tmp_path / "ws", run_id, url, "main", 10001, policy=LOCAL_REPOS,
                             disk_limit=limit)


def test_the_run_directory_is_a_filesystem_of_the_limit_holding_the_whole_run(
    tmp_path: Path,
) -> None:
    repo = prepare(tmp_path, 3, make_git_repo(tmp_path / "upstream"))
    run = workspace.run_dir(tmp_path / "ws", 3)
    image = disk.image_path(run)
    try:
        assert os.path.ismount(run)
        assert image.stat().st_size == LIMIT
        assert image.stat().st_blocks * 512 < LIMIT // 4  # sparse: only what is used
        # The clone and the host's own git directory both count against it.
        device = os.stat(run).st_dev
        assert os.stat(repo).st_dev == os.stat(workspace.host_git_dir(tmp_path / "ws", 3)
                                               ).st_dev == device
        assert (repo / "README.md").read_text() == "# demo\n"
        assert os.stat(repo).st_uid == 10001
        options = _mount_options(run)
        assert {"nosuid", "nodev"} <= options
        assert workspace.disk_limit_reached(tmp_path / "ws", 3) is None
    finally:
        workspace.remove(tmp_path / "ws", 3)
    assert not run.exists() and not image.exists()
    assert workspace.leftover_runs(tmp_path / "ws") == []


def test_a_full_filesystem_is_the_limit_reached_and_stays_within_it(tmp_path: Path) -> None:
    repo = prepare(tmp_path, 4, make_git_repo(tmp_path / "upstream"))
    try:
        with pytest.raises(OSError, match="No space left on device"), \
                (repo / "fill.bin").open("wb") as fill:
            for _ in range(2 * LIMIT // 1024**2):
                fill.write(b"\0" * 1024**2)
                fill.flush()
        assert workspace.disk_limit_reached(tmp_path / "ws", 4) == LIMIT
        image = disk.image_path(workspace.run_dir(tmp_path / "ws", 4))
        assert image.stat().st_blocks * 512 <= LIMIT
    finally:
        workspace.remove(tmp_path / "ws", 4)


def test_a_clone_that_does_not_fit_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    url = make_git_repo(upstream)
    (upstream / "big.bin").write_bytes(os.urandom(24 * 1024**2))  # does not compress
    repo = git.Repo(upstream)
    repo.index.add(["big.bin"])
    repo.index.commit("a big file")
    repo.close()

    with pytest.raises(workspace.WorkspaceError, match=(
            r"^the clone of file://.* at main does not fit in the run's disk limit of "
            r"16 MiB \(ROUTINES_RUN_DISK_LIMIT\)$")):
        prepare(tmp_path, 5, url, limit=16 * 1024**2)
    assert workspace.leftover_runs(tmp_path / "ws") == []
    assert list((tmp_path / "ws").iterdir()) == []


def test_without_mkfs_the_run_does_not_start_unlimited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = make_git_repo(tmp_path / "upstream")
    (tmp_path / "no-tools").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # so no mkfs.ext4 is found

    with pytest.raises(workspace.DiskLimitUnavailable) as refused:
        prepare(tmp_path, 6, url)

    assert str(refused.value) == (
        "the run's disk limit of 32 MiB cannot be enforced: mkfs.ext4 not found (install "
        "e2fsprogs) (ROUTINES_RUN_DISK_LIMIT=0 runs without a limit)")
    assert isinstance(refused.value, workspace.WorkspaceError)  # so the run ends `error`
    assert list((tmp_path / "ws").iterdir()) == []


def test_a_limit_of_zero_is_a_plain_directory(tmp_path: Path) -> None:
    repo = prepare(tmp_path, 8, make_git_repo(tmp_path / "upstream"), limit=0)
    run = workspace.run_dir(tmp_path / "ws", 8)
    assert not os.path.ismount(run) and not disk.image_path(run).exists()
    assert (repo / "README.md").exists()
    assert workspace.disk_limit_reached(tmp_path / "ws", 8) is None
    workspace.remove(tmp_path / "ws", 8)
    assert not run.exists()


def test_leftover_runs_are_found_by_directory_or_filesystem_file(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    for name in ("run-3", "run-12.img", "run-12", "publish", "run-x", "run-4.sock"):
        (root / name).mkdir(parents=True)
    assert workspace.leftover_runs(root) == [3, 12]


def _mount_options(path: Path) -> set[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == str(path):
                return set(fields[5].split(","))
    raise AssertionError(f"{path} is not mounted")

