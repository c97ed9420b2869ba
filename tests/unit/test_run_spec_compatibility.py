"""Run specs across versions of the host and the image: a spec without the new fields, or
with fields from a newer host, still reads; a spec sends only what differs from the
defaults, so an older image reads any spec that uses no new feature."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner.contract import RunSpec
from tests.support.run_specs import spec


def test_a_spec_without_the_new_fields_still_reads() -> None:
    old = ('{"run_id": 1, "routine": "r", "prompt": "p", "repo_url": "https://h/o/r", '
           '"branch": "main", "model": "m", "timeout_seconds": 60, "max_turns": 5, '
           '"setup_script": "", "max_tokens_per_turn": 4096}')
    parsed = RunSpec.from_json(old)
    assert (parsed.max_tokens, parsed.publish) == (None, False)


def test_a_spec_from_a_newer_host_still_reads() -> None:
    newer = json.loads(spec(1, "p", "https://h/o/r", max_tokens=50).to_json())
    parsed = RunSpec.from_json(json.dumps({**newer, "cost_centre": "ops", "retries": 2}))
    assert parsed == spec(1, "p", "https://h/o/r", max_tokens=50)


@pytest.mark.parametrize(("overrides", "keys"), [
    ({}, set()),
    ({"max_tokens": 100}, {"max_tokens"}),
    ({"publish": True, "setup_script": "make"}, {"publish", "setup_script"}),
])
def test_a_spec_sends_only_what_differs_from_the_defaults(
    overrides: dict[str, Any], keys: set[str],
) -> None:
    """So an older image, which refuses unknown keys, reads any spec using no new feature."""
    base = {"run_id", "routine", "prompt", "repo_url", "branch", "model",
            "timeout_seconds", "max_turns"}
    run = spec(1, "p", "https://h/o/r", **overrides)
    assert set(json.loads(run.to_json())) == base | keys
    assert RunSpec.from_json(run.to_json()) == run


def test_the_container_is_never_sent_the_host_side_fields() -> None:
    """`publish` and the egress policy are the host's business: the container's copy of the
    spec has them at their defaults, so its JSON does not even name them."""
    run = spec(1, "p", "https://h/o/r", publish=True, egress="custom:pypi.org")
    assert {"publish", "egress"} <= set(json.loads(run.to_json()))
    inside = run.for_container()
    assert set(json.loads(inside.to_json())).isdisjoint({"publish", "egress"})
    assert (inside.publish, inside.egress, inside.prompt) == (False, "none", "p")
