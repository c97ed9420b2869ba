"""A run's disk limit, the pure half: the setting's name, its default, reading a size
(`2g`, `512m`, plain bytes) and saying one to people (`2 GiB`).

The mechanics (a filesystem of its own per run, loop-mounted on the host) live in
`runner.host.disk`. Standard library only: the bot's settings and its verdict read these.
"""

from __future__ import annotations

import re

DISK_LIMIT_SETTING = "ROUTINES_RUN_DISK_LIMIT"
DEFAULT_DISK_LIMIT = 2 * 1024**3  # 2 GiB
# The smallest limit a run can be given: below it, ext4's own metadata and the clone of
# any real repository would not fit.
MIN_DISK_LIMIT = 16 * 1024**2
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?")


def parse_size(text: str) -> int:
    """Bytes from `2g`, `512M`, `64MiB`, `1048576`; `0` is 0 (no limit). Binary units.

    Raises `ValueError` saying what is accepted."""
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a size: give bytes, or a number with k, m, g "
                         "or t (binary units), e.g. 2g or 512m; 0 turns the limit off")
    size = int(match.group(1)) * _UNITS[match.group(2)]
    if 0 < size < MIN_DISK_LIMIT:
        raise ValueError(f"{text!r} is below the smallest limit, "
                         f"{describe_size(MIN_DISK_LIMIT)}; 0 turns the limit off")
    return size


def describe_size(size: int) -> str:
    """`2 GiB`, `512 MiB`, `1.5 GiB`, `100 bytes`: the largest unit that reads well."""
    for unit, name in ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if size >= unit:
            value = size / unit
            return f"{value:.0f} {name}" if value == int(value) else f"{value:.1f} {name}"
    return f"{size} bytes"
