"""Which runner a sandbox image holds: a digest of the files the Dockerfile copies into it.

The image is built with this digest as a label (`.ci/build-images.sh`), so `routines doctor`
can tell an image built from another version of the runner (a contract that may no longer
match the host's) from a current one, without starting a container. Standard library only:
the build script runs it before anything is installed."""

from __future__ import annotations

import hashlib
from pathlib import Path

LABEL = "org.routines.runner"
ROOT = Path(__file__).resolve().parent


def image_files(root: Path = ROOT) -> list[Path]:
    """What the Dockerfile's sandbox stage copies of the runner, in a stable order."""
    return [root / "__init__.py", root / "contract.py",
            *sorted((root / "inside").glob("*.py"))]


def runner_fingerprint(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for path in image_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    print(runner_fingerprint())
