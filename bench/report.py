"""What every bench prints with `--json`: one JSON object, its figures beside its
baseline's (measured in the same run) and the ratio; the readable report goes to stderr."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any


@contextlib.contextmanager
def readable_report(as_json: bool) -> Iterator[None]:
    """With `--json`, the human-readable lines go to stderr so stdout holds the JSON only."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def print_json(bench: str, figures: dict[str, Any], baseline: dict[str, Any],
               ratio: float, **context: Any) -> None:
    print(json.dumps({"bench": bench, "date": datetime.now(UTC).date().isoformat(),
                      "figures": figures, "baseline": baseline, "ratio": round(ratio, 4),
                      **context}))


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]
