"""The one typed settings object, built once at start-up from the environment.

Nothing below the entry point reads the environment: everything gets a `Settings`.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bot.core.crash_stage import CrashStage, parse_stage
from bot.core.pricing import PriceTable
from bot.core.roles import parse_principals
from bot.errors import SettingsError
from runner.disk_limit import DEFAULT_DISK_LIMIT, parse_size
from runner.egress_policy import DEFAULT_TRUSTED_HOSTS, parse_trusted
from runner.repo_policy import DEFAULT_REPO_HOSTS, parse_hosts

T = TypeVar("T")

DEFAULT_MODEL = "claude-sonnet-5-5"  # current; any model id is accepted (bot.services.models)


@dataclass(frozen=True)
class Settings:
    slack_bot_token: str
    anthropic_api_key: str
    slack_signing_secret: str = ""
    slack_app_token: str = ""
    slack_api_url: str = "https://slack.com/api/"
    # The model gateway's upstream ("" : api.anthropic.com). The key and this URL stay on
    # the host: a run's container gets a run token and the gateway's address instead.
    anthropic_base_url: str = ""
    database_url: str = "sqlite:///routines.db"
    docker_host: str = ""
    host: str = "0.0.0.0"  # noqa: S104 - Slack must reach the HTTP mode server
    port: int = 3000
    data_dir: Path = Path("data")
    sandbox_image: str = "routines-sandbox:latest"
    # The image runs of `engine=claude-code` routines start from (README "Engines").
    claude_code_image: str = "routines-claude-code:latest"
    # Ignored since runs have no network (`--network none`, the host reached through Unix
    # sockets); still read so that existing configurations load.
    sandbox_network: str = "routines-sandbox"
    sandbox_memory: str = "1g"
    sandbox_cpus: float = 1.0
    sandbox_pids: int = 256
    sandbox_runtime: str = ""  # "runsc" runs every container under gVisor
    run_disk_limit: int = DEFAULT_DISK_LIMIT  # bytes a run's files may take; 0: no limit
    max_concurrent_runs: int = 2
    # Warm containers kept ready for runs (README "Warm pool"); None: one per concurrency
    # slot (max_concurrent_runs); 0: none, every run starts its own container.
    warm_pool: int | None = None
    default_model: str = DEFAULT_MODEL
    default_timeout_seconds: int = 1800
    min_timeout_seconds: int = 60
    max_timeout_seconds: int = 4 * 3600
    max_turns: int = 40
    allow_local_repos: bool = False
    # Hosts a routine's repository may be on (`runner.repo_policy`): names, `*.domain`, `*`.
    repo_hosts: tuple[str, ...] = DEFAULT_REPO_HOSTS
    # What a run with `network=trusted` may reach through the egress proxy (replaces the
    # default list of package registries and GitHub).
    trusted_hosts: tuple[str, ...] = DEFAULT_TRUSTED_HOSTS
    triggers_per_minute: int = 30
    api_max_body_bytes: int = 256 * 1024
    github_webhook_secret: str = ""
    min_schedule_interval_seconds: int = 60
    schedule_grace_seconds: int = 300
    schedule_sync_seconds: float = 30.0  # how soon schedules saved by another process apply
    min_retry_backoff_seconds: int = 5  # tests lower it; not read from the environment
    github_max_body_bytes: int = 25 * 1024 * 1024  # GitHub's own cap on a delivery
    extra_secrets: tuple[str, ...] = field(default_factory=tuple)
    log_format: str = "text"  # or "json": one JSON object per line (bot.logging_config)
    home_refresh_seconds: float = 5.0  # how often Home tabs look for changes from elsewhere
    prices: PriceTable = field(default_factory=PriceTable.default)
    admins: tuple[str, ...] = ()  # user ids and `subteam:S...` user groups
    incidents_channel: str = ""  # kill switch and spend announcements also go here
    approval_timeout_seconds: int = 24 * 3600
    daily_spend_cap_usd: float = 100.0  # 0: no cap
    # The HTTP doors let a slow or half-open client go: its headers must arrive within the
    # first, its body within the second (tests lower them; not read from the environment).
    http_header_timeout_seconds: float = 15.0
    http_body_timeout_seconds: float = 30.0
    # A running run's live message (bot/doors/slack/live_progress.py); off: only the
    # result is posted, when the run ends.
    live_progress: bool = True
    progress_update_seconds: float = 5.0  # at least this long between two updates of one run
    # Every run's updates together: chat.update is in Slack's Tier 3 (about 50 a minute).
    progress_updates_per_second: float = 0.8
    progress_idle_seconds: float = 300.0  # silent this long: "no activity for N min"
    # Scale-out (docs/scale-out.md). A process's worker id is "host/name": stable across
    # restarts, so a restarted worker adopts its own containers and no one else's.
    worker_host: str = ""  # "" : this machine's host name
    worker_name: str = "main"
    execute: bool = True  # `serve` executes runs too unless ROUTINES_EXECUTE=off
    lease_seconds: float = 30.0  # a claimed run, or the scheduler, is lost this long after
    # its holder's last heartbeat
    # Test-only (the crash tests): the process SIGKILLs itself when a run reaches this
    # stage (bot.execution.crash). Never set in production.
    test_crash_at: CrashStage | None = None

    @property
    def socket_mode(self) -> bool:
        return bool(self.slack_app_token)

    @property
    def worker_id(self) -> str:
        """Names this process on the runs it claims and its containers' labels."""
        return f"{self.worker_host or socket.gethostname()}/{self.worker_name}"

    @property
    def instance(self) -> str:
        """Names this deployment's containers: stable across restarts (same database),
        distinct between deployments that share a Docker engine."""
        return hashlib.sha256(self.database_url.encode()).hexdigest()[:12]

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never be stored or shown in clear."""
        values = (
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            self.anthropic_api_key,
            self.github_webhook_secret,
            *self.extra_secrets,
        )
        return tuple(v for v in values if v)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 serving: bool = True) -> Settings:
        """Read the usual variable names; a missing required one raises one clear line.

        `serving=False` is for commands that only read and change the database (the
        operator's CLI): the Slack and Anthropic credentials are then not required."""
        env = os.environ if env is None else env
        required = ["SLACK_BOT_TOKEN", "ANTHROPIC_API_KEY"]
        if not env.get("SLACK_APP_TOKEN"):
            required.append("SLACK_SIGNING_SECRET")  # HTTP mode verifies every request
        missing = [name for name in required if not env.get(name)]
        if missing and serving:
            raise SettingsError(f"missing required setting: {', '.join(missing)}")
        return cls(
            slack_bot_token=env.get("SLACK_BOT_TOKEN", ""),
            anthropic_api_key=env.get("ANTHROPIC_API_KEY", ""),
            slack_signing_secret=env.get("SLACK_SIGNING_SECRET", ""),
            slack_app_token=env.get("SLACK_APP_TOKEN", ""),
            slack_api_url=env.get("SLACK_API_URL", cls.slack_api_url),
            anthropic_base_url=env.get("ANTHROPIC_BASE_URL", ""),
            database_url=env.get("DATABASE_URL", cls.database_url),
            docker_host=env.get("DOCKER_HOST", ""),
            host=env.get("ROUTINES_HOST", cls.host),
            port=_int(env, "PORT", cls.port),
            data_dir=Path(env.get("ROUTINES_DATA_DIR", str(cls.data_dir))),
            sandbox_image=env.get("ROUTINES_SANDBOX_IMAGE", cls.sandbox_image),
            claude_code_image=env.get("ROUTINES_CLAUDE_CODE_IMAGE", cls.claude_code_image),
            sandbox_network=env.get("ROUTINES_SANDBOX_NETWORK", cls.sandbox_network),
            sandbox_memory=env.get("ROUTINES_SANDBOX_MEMORY", cls.sandbox_memory),
            sandbox_cpus=_float(env, "ROUTINES_SANDBOX_CPUS", cls.sandbox_cpus),
            sandbox_pids=_int(env, "ROUTINES_SANDBOX_PIDS", cls.sandbox_pids),
            sandbox_runtime=env.get("ROUTINES_SANDBOX_RUNTIME", "").strip(),
            run_disk_limit=_parsed(env, "ROUTINES_RUN_DISK_LIMIT", lambda raw: parse_size(
                raw) if raw.strip() else cls.run_disk_limit),
            max_concurrent_runs=_int(env, "ROUTINES_MAX_CONCURRENT_RUNS", cls.max_concurrent_runs),
            warm_pool=_warm_pool(env),
            default_model=env.get("ROUTINES_DEFAULT_MODEL", cls.default_model),
            max_turns=_int(env, "ROUTINES_MAX_TURNS", cls.max_turns),
            allow_local_repos=_flag(env, "ROUTINES_ALLOW_LOCAL_REPOS", False),
            repo_hosts=_parsed(env, "ROUTINES_REPO_HOSTS", parse_hosts),
            trusted_hosts=_parsed(env, "ROUTINES_TRUSTED_HOSTS", parse_trusted),
            triggers_per_minute=_int(env, "ROUTINES_TRIGGERS_PER_MINUTE", cls.triggers_per_minute),
            api_max_body_bytes=_int(env, "ROUTINES_API_MAX_BODY_BYTES", cls.api_max_body_bytes),
            github_webhook_secret=env.get("GITHUB_WEBHOOK_SECRET", ""),
            log_format=_choice(env, "ROUTINES_LOG_FORMAT", ("text", "json"), cls.log_format),
            home_refresh_seconds=_float(env, "ROUTINES_HOME_REFRESH_SECONDS",
                                        cls.home_refresh_seconds),
            min_schedule_interval_seconds=_int(env, "ROUTINES_MIN_INTERVAL_SECONDS",
                                               cls.min_schedule_interval_seconds),
            schedule_grace_seconds=_int(env, "ROUTINES_SCHEDULE_GRACE_SECONDS",
                                        cls.schedule_grace_seconds),
            schedule_sync_seconds=_float(env, "ROUTINES_SCHEDULE_SYNC_SECONDS",
                                         cls.schedule_sync_seconds),
            prices=PriceTable.parse(env.get("ROUTINES_PRICES", "")),
            admins=_parsed(env, "ROUTINES_ADMINS", parse_principals),
            incidents_channel=env.get("ROUTINES_INCIDENTS_CHANNEL", ""),
            approval_timeout_seconds=_int(env, "ROUTINES_APPROVAL_TIMEOUT_SECONDS",
                                          cls.approval_timeout_seconds),
            daily_spend_cap_usd=_float(env, "ROUTINES_DAILY_SPEND_CAP_USD",
                                       cls.daily_spend_cap_usd),
            live_progress=_flag(env, "ROUTINES_LIVE_PROGRESS", True),
            progress_update_seconds=_float(env, "ROUTINES_PROGRESS_UPDATE_SECONDS",
                                           cls.progress_update_seconds),
            progress_updates_per_second=_float(env, "ROUTINES_PROGRESS_UPDATES_PER_SECOND",
                                               cls.progress_updates_per_second),
            progress_idle_seconds=_float(env, "ROUTINES_PROGRESS_IDLE_SECONDS",
                                         cls.progress_idle_seconds),
            worker_host=_parsed(env, "ROUTINES_WORKER_HOST", _worker_part),
            worker_name=_parsed(env, "ROUTINES_WORKER_NAME", _worker_part) or cls.worker_name,
            execute=_flag(env, "ROUTINES_EXECUTE", True),
            lease_seconds=_lease(env),
            test_crash_at=_parsed(env, "ROUTINES_TEST_CRASH_AT", parse_stage),
            extra_secrets=tuple(
                v for v in env.get("ROUTINES_REDACT", "").split(",") if v.strip()
            ),
        )


def _parsed(env: Mapping[str, str], name: str, parse: Callable[[str], T]) -> T:
    """A setting read by its own parser (which gets "" when it is unset); the parser's
    ValueError becomes one line naming the setting."""
    try:
        return parse(env.get(name, ""))
    except ValueError as exc:
        raise SettingsError(f"setting {name}: {exc}") from None


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    return default if not value else value in {"1", "true", "yes", "on"}


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"setting {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_number(env, name, default, int, "a whole number"))


def _warm_pool(env: Mapping[str, str]) -> int | None:
    """ROUTINES_WARM_POOL: unset or empty, the default (one per concurrency slot)."""
    if not env.get("ROUTINES_WARM_POOL", "").strip():
        return None
    size = _int(env, "ROUTINES_WARM_POOL", 0)
    if size < 0:
        raise SettingsError(f"setting ROUTINES_WARM_POOL must be 0 or more, got {size}")
    return size


_WORKER_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _worker_part(raw: str) -> str:
    """A worker's host or name: a label that fits a container label and a log line."""
    value = raw.strip()
    if value and not _WORKER_PART.fullmatch(value):
        raise ValueError(f"expected letters, digits, '.', '_' or '-' (63 at most), got {value!r}")
    return value


def _lease(env: Mapping[str, str]) -> float:
    lease = _float(env, "ROUTINES_LEASE_SECONDS", Settings.lease_seconds)
    if lease < 3:
        raise SettingsError(f"setting ROUTINES_LEASE_SECONDS must be 3 or more, got {lease:g}")
    return lease


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


def _number(env: Mapping[str, str], name: str, default: float,
            parse: Callable[[str], float], kind: str) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise SettingsError(f"setting {name} must be {kind}, got {raw!r}") from None


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of a `.env` file (`export ` prefix, quotes, `#` comments allowed).

    A line that is none of these is refused with the file and line, rather than skipped:
    a setting silently not applied is worse than a refusal to start."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.replace("_", "").isalnum() or key[0].isdigit():
            raise SettingsError(f"{path}:{number}: expected KEY=VALUE, got {raw.strip()[:40]!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def environment(env: Mapping[str, str], env_file: Path) -> dict[str, str]:
    """The process environment over `env_file` when it exists: the environment wins."""
    return {**(read_env_file(env_file) if env_file.is_file() else {}), **env}
