"""What a warm container is given and how (runner/host/pool.py, runner/inside/warm.py): the
setting that sizes the pool, the delivery's round trip, and a delivery that is written
whole or not at all, never through a link the container could have planted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.errors import SettingsError
from bot.settings import Settings
from runner.contract import DELIVERY_FILE, delivery_json, read_delivery
from runner.host.pool import write_delivery
from runner.inside.warm import wait_for_run
from tests.support.run_specs import spec

REQUIRED = {"SLACK_BOT_TOKEN": "xoxb-1", "ANTHROPIC_API_KEY": "sk-ant-1",
            "SLACK_SIGNING_SECRET": "s"}


@pytest.mark.parametrize(("raw", "size"), [("", None), ("  ", None), ("0", 0), ("3", 3)])
def test_the_warm_pool_setting(raw: str, size: int | None) -> None:
    assert Settings.from_env({**REQUIRED, "ROUTINES_WARM_POOL": raw}).warm_pool == size


@pytest.mark.parametrize("raw", ["-1", "two", "1.5"])
def test_a_warm_pool_setting_that_is_no_size_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="ROUTINES_WARM_POOL"):
        Settings.from_env({**REQUIRED, "ROUTINES_WARM_POOL": raw})


def test_the_delivered_run_is_read_once_and_gone(tmp_path: Path) -> None:
    run = spec(9, "Do it.", "file:///repo", publish=True).for_container()
    write_delivery(tmp_path, delivery_json(run, "rt-token-9"))
    assert (tmp_path / DELIVERY_FILE).stat().st_mode & 0o777 == 0o400
    assert [p.name for p in tmp_path.iterdir()] == [DELIVERY_FILE]  # no temporary left

    assert wait_for_run(str(tmp_path)) == (run, "rt-token-9")
    assert list(tmp_path.iterdir()) == []  # deleted before anything else could read it


def test_a_delivery_never_follows_a_planted_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    box = tmp_path / "delivery"
    box.mkdir()
    (box / DELIVERY_FILE).symlink_to(elsewhere)
    write_delivery(box, delivery_json(spec(3, "x", "file:///r"), "rt-3"))
    assert not elsewhere.exists()  # the rename replaced the link itself
    assert not (box / DELIVERY_FILE).is_symlink()
    assert read_delivery((box / DELIVERY_FILE).read_text())[1] == "rt-3"
    assert os.listdir(box) == [DELIVERY_FILE]
