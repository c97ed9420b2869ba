"""`routines doctor`: every dependency the bot needs, checked the way the bot will use it.

Each check is one `Finding`: ok, or what is wrong and how to fix it. The checks run in the
order a new operator would fix things (settings first: the others need them) and never
change anything: no schema upgrade, no container started (the gateway and the proxy are
opened once on sockets of a temporary directory, then closed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.core.redaction import Redactor
from bot.core.worker import WorkerState
from bot.doors.slack.scopes import BOT_SCOPES
from bot.errors import RoutinesError
from bot.services import ServicePolicy, Services
from bot.settings import Settings
from bot.store import schema
from bot.store.database import Database
from bot.store.tables import utcnow
from runner.disk_limit import describe_size
from runner.egress_policy import EgressPolicy
from runner.fingerprint import LABEL, runner_fingerprint
from runner.host.egress_proxy import EgressProxy
from runner.host.gateway import GatewayRun, ModelGateway
from runner.host.loop import BackgroundLoop

TIMEOUT_SECONDS = 10
CLAUDE_CODE_LABEL = "org.routines.claude_code"  # the CLI version in the claude-code image


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.check}: {self.detail}"
        return f"FAIL  {self.check}: {self.detail}" + (f" (fix: {self.fix})" if self.fix else "")


class Failed(Exception):
    """A check's failure, with the fix to show."""

    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


def diagnose(env: Mapping[str, str]) -> list[Finding]:
    try:
        settings = Settings.from_env(env)
    except RoutinesError as exc:
        return [Finding("settings", False, str(exc), "set it in the environment or in .env")]
    findings = [Finding("settings", True, "read")]
    checks: list[tuple[str, Callable[[Settings], str]]] = [
        ("settings agree", _consistent), ("slack token", _slack), ("slack mode", _slack_mode),
        ("docker engine", _docker), ("sandbox image", _image),
        ("claude-code image", _claude_code_image), ("sandbox runtime", _runtime),
        ("database", _database), ("run disk limit", _disk_limit),
        ("gateway and proxy", _servers),
    ]
    for name, check in checks:
        try:
            findings.append(Finding(name, True, check(settings)))
        except Failed as exc:
            findings.append(Finding(name, False, exc.detail, exc.fix))
        except Exception as exc:  # a check must report, not crash the report
            findings.append(Finding(name, False, f"{type(exc).__name__}: {exc}"[:300]))
    if all(f.ok for f in findings if f.check == "database"):
        findings.extend(_workers(settings))
    return findings


def _workers(settings: Settings) -> list[Finding]:
    """A line per process that served this database (`bot.services.workers`): its role,
    state, heartbeat age and running runs. A silent worker that still holds runs fails
    the check (those runs are being lost); a silent one holding nothing is only said."""
    db = Database(settings.database_url)
    try:
        workers = Services(db, ServicePolicy.from_settings(settings),
                           Redactor(settings.secrets)).workers.all(settings.lease_seconds)
    except Exception as exc:  # a check must report, not crash the report
        return [Finding("workers", False, f"{type(exc).__name__}: {exc}"[:300])]
    finally:
        db.close()
    if not workers:
        return [Finding("workers", True, "none registered yet (no process has served it)")]
    now = utcnow()
    found: list[Finding] = []
    for worker in workers:
        age = describe_age((now - worker.heartbeat_at).total_seconds())
        runs = (f"running #{', #'.join(map(str, worker.running_runs))}"
                if worker.running_runs else "no runs")
        detail = (f"{worker.role}, {worker.state}, last heartbeat {age} ago, {runs}")
        stuck = worker.state == WorkerState.SILENT and bool(worker.running_runs)
        found.append(Finding(f"worker {worker.id}", not stuck, detail,
                             "its runs end when their lease runs out; restart the process, "
                             "or check its host" if stuck else ""))
    return found


def describe_age(seconds: float) -> str:
    """A heartbeat's age as people read it: 4s, 3m, 5h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _consistent(settings: Settings) -> str:
    problems = []
    if settings.min_timeout_seconds > settings.max_timeout_seconds:
        problems.append("the minimum timeout is above the maximum")
    if not (settings.min_timeout_seconds <= settings.default_timeout_seconds
            <= settings.max_timeout_seconds):
        problems.append("the default timeout is outside the allowed range")
    if settings.max_concurrent_runs < 1:
        problems.append("ROUTINES_MAX_CONCURRENT_RUNS below 1: no run would ever start")
    if settings.daily_spend_cap_usd < 0:
        problems.append("ROUTINES_DAILY_SPEND_CAP_USD is negative (0 means no cap)")
    if settings.allow_local_repos:
        problems.append("ROUTINES_ALLOW_LOCAL_REPOS lets any Slack user read the host's "
                        "repositories: for tests only")
    if problems:
        raise Failed("; ".join(problems), "change the settings named")
    return "no contradictions"


def _slack(settings: Settings) -> str:
    client = WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url,
                       timeout=TIMEOUT_SECONDS)
    try:
        answer = client.auth_test()
    except SlackApiError as exc:
        raise Failed(f"Slack refused the bot token: {exc.response.get('error')}",
                     "copy the Bot User OAuth Token (xoxb-...) of the installed app into "
                     "SLACK_BOT_TOKEN") from None
    except SlackClientError as exc:
        raise Failed(f"Slack did not answer at {settings.slack_api_url}: {exc}",
                     "check SLACK_API_URL and the network") from None
    except OSError as exc:
        raise Failed(f"Slack did not answer at {settings.slack_api_url}: {exc}",
                     "check SLACK_API_URL and the network") from None
    granted = {s.strip() for s in str(answer.headers.get("x-oauth-scopes", "")).split(",")
               if s.strip()}
    missing = sorted(BOT_SCOPES - granted)
    if missing:
        raise Failed(f"the token lacks the scopes {', '.join(missing)}",
                     "reinstall the app from manifest.json")
    return f"authenticated as {answer.get('user')} in {answer.get('team')}, scopes granted"


def _slack_mode(settings: Settings) -> str:
    if settings.socket_mode:
        if not settings.slack_app_token.startswith("xapp-"):
            raise Failed("SLACK_APP_TOKEN is not an app-level token",
                         "create one with connections:write (it starts with xapp-)")
        return "Socket Mode (SLACK_APP_TOKEN)"
    return f"HTTP on {settings.host}:{settings.port}, requests verified with the signing secret"


def _docker(settings: Settings) -> str:
    client = _client(settings)
    try:
        client.ping()
        found = client.version()
    finally:
        client.close()
    return f"Docker {found.get('Version', '?')} answers"


def _image(settings: Settings) -> str:
    client = _client(settings)
    try:
        image = client.images.get(settings.sandbox_image)
    except docker.errors.ImageNotFound:
        raise Failed(f"{settings.sandbox_image} is not on the engine",
                     "build it: make images") from None
    finally:
        client.close()
    built_from = (image.labels or {}).get(LABEL)
    expected = runner_fingerprint()
    if built_from != expected:
        raise Failed(f"{settings.sandbox_image} holds runner {built_from or 'unknown'}, "
                     f"this version is runner {expected}", "rebuild it: make images")
    return f"{settings.sandbox_image}, runner {expected}"


def _claude_code_image(settings: Settings) -> str:
    """The image `engine=claude-code` runs start from, with the Claude Code version pinned
    into it (`org.routines.claude_code`, from .ci/build-images.sh)."""
    name = settings.claude_code_image
    client = _client(settings)
    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        raise Failed(f"{name} is not on the engine",
                     "build it: make images (engine=claude-code routines need it)") from None
    finally:
        client.close()
    labels = image.labels or {}
    built_from, expected = labels.get(LABEL), runner_fingerprint()
    if built_from != expected:
        raise Failed(f"{name} holds runner {built_from or 'unknown'}, "
                     f"this version is runner {expected}", "rebuild it: make images")
    return f"{name}, Claude Code {labels.get(CLAUDE_CODE_LABEL, 'unknown')}, runner {expected}"


def _runtime(settings: Settings) -> str:
    if not settings.sandbox_runtime:
        return "the engine's default (runc)"
    client = _client(settings)
    try:
        runtimes: dict[str, Any] = client.info().get("Runtimes", {})
    finally:
        client.close()
    if settings.sandbox_runtime not in runtimes:
        raise Failed(f"the engine has no runtime {settings.sandbox_runtime!r} "
                     f"(it has {', '.join(sorted(runtimes)) or 'none'})",
                     "register it in /etc/docker/daemon.json (.ci/runsc-up.sh does for runsc)")
    return settings.sandbox_runtime


def _database(settings: Settings) -> str:
    db = Database(settings.database_url)
    try:
        if not db.ping():
            raise Failed("the database does not answer", "check DATABASE_URL")
        try:
            schema.require_head(db)
        except RoutinesError as exc:
            raise Failed(str(exc)) from None
        return f"at migration {schema.head()} (the newest)"
    finally:
        db.close()


def _disk_limit(settings: Settings) -> str:
    """Each run's workspace is a loop-mounted filesystem of the limit: root, mkfs.ext4 and
    loop devices are needed, or every run would end in error."""
    limit = settings.run_disk_limit
    if not limit:
        return "off (ROUTINES_RUN_DISK_LIMIT=0): a run can fill the host's disk"
    missing = [what for what, ok in (
        ("root (mounting)", os.geteuid() == 0),
        ("mkfs.ext4 (e2fsprogs)", shutil.which("mkfs.ext4") is not None),
        ("loop devices (/dev/loop-control)", Path("/dev/loop-control").exists()))
        if not ok]
    if missing:
        raise Failed(f"a limit of {describe_size(limit)} cannot be enforced without "
                     f"{', '.join(missing)}", "run as root with e2fsprogs and loop devices, "
                     "or set ROUTINES_RUN_DISK_LIMIT=0")
    return f"{describe_size(limit)} per run"


def _servers(settings: Settings) -> str:
    """The model gateway and the egress proxy listen on Unix sockets in the data directory:
    both opened there once, then closed."""
    with tempfile.TemporaryDirectory(prefix="doctor-", dir=_existing(settings.data_dir)) as tmp:
        loop = BackgroundLoop("doctor")
        gateway = ModelGateway(loop, settings.anthropic_base_url, settings.anthropic_api_key)
        proxy = EgressProxy(loop)
        try:
            gateway.open(GatewayRun(0, "0" * 64, None, lambda _call: None),
                         Path(tmp) / "gateway.sock")
            proxy.open_run(0, EgressPolicy.from_spec(""), Path(tmp) / "proxy.sock",
                           lambda _attempt: None)
        except OSError as exc:
            raise Failed(f"could not listen in {settings.data_dir}: {exc}",
                         "make ROUTINES_DATA_DIR writable") from None
        finally:
            proxy.close()
            gateway.stop()
            loop.stop()
    return f"both listen in {settings.data_dir}"


def _existing(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _client(settings: Settings) -> docker.DockerClient:
    try:
        return docker.DockerClient(base_url=settings.docker_host or None,
                                   timeout=TIMEOUT_SECONDS)
    except docker.errors.DockerException as exc:
        raise Failed(f"no Docker engine at {settings.docker_host or 'the local socket'}: {exc}",
                     "start dockerd, or set DOCKER_HOST") from None
