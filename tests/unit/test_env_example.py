"""`.env.example` lists every setting the bot reads, with the default it really has."""

from __future__ import annotations

import re
from pathlib import Path

from bot.settings import Settings, read_env_file

ROOT = Path(__file__).resolve().parents[2]
READ_BY_CLI = {"LOG_LEVEL", "ROUTINES_OPERATOR"}


def test_every_setting_is_listed_once() -> None:
    read = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', (ROOT / "bot/settings.py").read_text()))
    listed = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(),
                        flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), "a setting listed twice"
    assert set(listed) == read | READ_BY_CLI


def test_the_defaults_shown_are_the_defaults(tmp_path: Path) -> None:
    """Uncommented, the example's defaults give the same settings as none at all."""
    lines = [line.removeprefix("# ") for line in (ROOT / ".env.example").read_text()
             .splitlines() if re.match(r"^# [A-Z][A-Z0-9_]+=", line)]
    example = tmp_path / ".env"
    example.write_text("\n".join(lines) + "\n")
    required = {"SLACK_BOT_TOKEN": "xoxb-1", "ANTHROPIC_API_KEY": "sk-ant-1",
                "SLACK_SIGNING_SECRET": "s"}
    shown = {k: v for k, v in read_env_file(example).items() if k not in READ_BY_CLI}
    assert Settings.from_env({**shown, **required}) == Settings.from_env(required)
