"""Soak: N minutes of mixed traffic at a real `routines serve`, then what it left behind.

What it does:

* Starts the Slack and Anthropic stand-ins on loopback, a local git repository, and the bot
  as a separate process (`routines serve`, SQLite in a temp dir, real
  containers on the local engine), so the figures are the bot's own process and not the
  client's.
* Creates two routines through the create form: `soak` (triggered by slash command and
  the API) and `soak-gh` (listening to GitHub `pull_request.opened`).
* For `--minutes`, sends a mix, one request every `--interval` seconds from a seeded
  random choice: slash commands (`list`, `status`, `history`), `/routine run`, API triggers
  (bearer token, unique Idempotency-Key) and run-status reads, signed GitHub deliveries,
  View log button clicks on posted results, App Home opens, and forged requests (a bad
  Slack signature, a bad GitHub signature) that must be refused. Run-starting requests are
  held back while `--max-in-flight` runs are unfinished, so the queue stays bounded.
* Every `--sample-seconds`, reads the bot's RSS and open file descriptors from /proc.
* At the end, waits for every run to finish and be announced, stops the bot with SIGTERM,
  and counts leftovers: containers and networks labelled with this bot's instance,
  workspaces, runs not finished, finished runs never announced.

Errors are any answer other than the one expected (every 5xx, every transport error, a
forged request not refused), every run that did not succeed, and every ERROR line or
traceback in the bot's log. A trigger refused by the routine's rate limit is the rule
working, counted apart (`refused_by_rules`). The baseline is the bot's own RSS once warmed up (after
`--warmup-minutes`); the ratio is its RSS at the end over that, so 1.0 means flat.

Run from the repository root, after `make images`:

    python bench/soak.py --minutes 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
import docker  # noqa: E402
import sqlalchemy  # noqa: E402

from bench.report import print_json, readable_report  # noqa: E402
from runner.contract import LABEL_INSTANCE  # noqa: E402
from tests.standins.anthropic_api import AnthropicStandIn, report  # noqa: E402
from tests.standins.environment import (  # noqa: E402
    API_KEY,
    local_settings,
    make_git_repo,
)
from tests.standins.slack_api import SlackApiStandIn  # noqa: E402
from tests.support.github_payloads import own  # noqa: E402
from tests.support.http_doors import WEBHOOK_SECRET  # noqa: E402
from tests.support.served_bot import ServedBot  # noqa: E402
from tests.support.slack_requests import FakeSlack, modal_values  # noqa: E402

RESULTS_CHANNEL = "C0RESULTS1"
ROUTINE, GH_ROUTINE = "soak", "soak-gh"
DEFAULT_IMAGE = os.environ.get("ROUTINES_SANDBOX_IMAGE", "routines-sandbox:latest")
DRAIN_TIMEOUT = 300.0
REQUEST_TIMEOUT = 30.0


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


@dataclass
class Sample:
    at_s: float
    rss_mib: float
    open_fds: int
    requests: int
    errors: int


@dataclass
class Traffic:
    """What was sent and what came back wrong."""

    sent: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # a rule said no, as it should
    run_ids: set[int] = field(default_factory=set)
    api_run_ids: list[int] = field(default_factory=list)  # the token may read these
    results: list[dict[str, Any]] = field(default_factory=list)  # posted result messages

    def wrong(self, kind: str, status: int, expected: set[int]) -> None:
        if status not in expected:
            self.errors[f"{kind}: {status}"] += 1


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def log_errors(log: str) -> int:
    return sum(" ERROR " in line or line.startswith("Traceback") for line in log.splitlines())


def sample(at: float, pid: int, traffic: Traffic) -> Sample:
    return Sample(round(at, 1), round(rss_mib(pid), 1), open_fds(pid),
                  sum(traffic.sent.values()), sum(traffic.errors.values()))


async def create(fake: FakeSlack, slack_api: SlackApiStandIn, name: str, prompt: str,
                 repo: str) -> None:
    reply = await fake.submit_view("routine_create", modal_values(
        name=name, prompt=prompt, repo_url=repo, branch="main", setup_script="",
        channel_id=RESULTS_CHANNEL, model="claude-test-1", timeout_seconds="60"))
    if reply.status != 200 or reply.text:
        raise BenchError(f"create {name} refused ({reply.status}): {reply.text}")
    await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                             contains=f"created routine *{name}*", timeout=10)


class Mix:
    """The requests of the soak, each a coroutine that records what it saw."""

    def __init__(self, base: str, fake: FakeSlack, slack_api: SlackApiStandIn, token: str,
                 traffic: Traffic, http: aiohttp.ClientSession) -> None:
        self.base, self.fake, self.slack_api, self.token = base, fake, slack_api, token
        self.traffic, self.http = traffic, http

    async def command(self) -> None:
        text = random.choice(["list", f"status {ROUTINE}", f"history {ROUTINE}", "help"])
        self.traffic.wrong("command", (await self.fake.slash(text)).status, {200})

    async def slash_run(self) -> None:
        reply = await self.fake.slash(f"run {ROUTINE}")
        self.traffic.wrong("slash run", reply.status, {200})
        text = str(reply.json().get("text", "")) if reply.status == 200 else ""
        if "queued" in text:
            self.traffic.run_ids.add(int(text.split("#")[1].split(" ")[0]))
        elif "triggered too often" in text:  # the trigger rate limit, shared with the API
            self.traffic.refused["slash run: rate limited"] += 1
        else:
            self.traffic.errors[f"slash run: {text[:80]}"] += 1

    async def api_trigger(self) -> None:
        async with self.http.post(
                f"{self.base}/api/v1/routines/{ROUTINE}/runs", json={"soak": True},
                headers={"Authorization": f"Bearer {self.token}",
                         "Idempotency-Key": uuid.uuid4().hex}) as reply:
            body = await reply.json()
            if reply.status == 429:  # the routine's trigger rate limit
                self.traffic.refused["api trigger: 429 rate limited"] += 1
                return
            self.traffic.wrong("api trigger", reply.status, {202})
            if reply.status == 202:
                self.traffic.run_ids.add(int(body["run_id"]))
                self.traffic.api_run_ids.append(int(body["run_id"]))

    async def api_status(self) -> None:
        if not self.traffic.api_run_ids:
            return
        run_id = random.choice(self.traffic.api_run_ids)
        async with self.http.get(f"{self.base}/api/v1/runs/{run_id}", headers={
                "Authorization": f"Bearer {self.token}"}) as reply:
            await reply.read()
            self.traffic.wrong("api status", reply.status, {200})

    async def github(self, forged: bool = False) -> None:
        body = own("pull_request.opened")
        digest = _hmac(WEBHOOK_SECRET if not forged else "not-the-secret", body)
        async with self.http.post(f"{self.base}/github/webhook", data=body, headers={
                "Content-Type": "application/json", "X-GitHub-Event": "pull_request",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": f"sha256={digest}"}) as reply:
            document = await reply.json()
            expected = {401} if forged else {202}
            self.traffic.wrong("github forged" if forged else "github", reply.status, expected)
            if reply.status == 202:
                self.traffic.run_ids.update(int(f["run_id"]) for f in document["fired"])

    async def forged_github(self) -> None:
        await self.github(forged=True)

    async def forged_slash(self) -> None:
        reply = await self.fake.slash("list", signature="v0=" + "0" * 64)
        self.traffic.wrong("slack forged", reply.status, {401})

    async def view_log(self) -> None:
        if not self.traffic.results:
            return
        message = random.choice(self.traffic.results)
        reply = await self.fake.click("view_log", message["run_id"], channel=RESULTS_CHANNEL,
                                      message_ts=message["ts"])
        self.traffic.wrong("view log", reply.status, {200})

    async def home(self) -> None:
        self.traffic.wrong("app home", (await self.fake.open_home()).status, {200})


def _hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def collect_results(slack_api: SlackApiStandIn, traffic: Traffic) -> None:
    """The result messages posted so far, for View log clicks and the tally."""
    seen = {m["run_id"] for m in traffic.results}
    for call in slack_api.calls_to("chat.postMessage"):
        text = str(call.params.get("text", ""))
        if call.params.get("channel") != RESULTS_CHANNEL or " run #" not in text \
                or call.params.get("thread_ts"):
            continue
        run_id = text.split(" run #")[1].split(":")[0]
        if run_id.isdigit() and run_id not in seen and call.response.get("ts"):
            seen.add(run_id)
            traffic.results.append({"run_id": run_id, "ts": call.response["ts"],
                                    "text": text})


async def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    slack_api, anthropic_api = SlackApiStandIn(), AnthropicStandIn(API_KEY)
    await slack_api.start()
    await anthropic_api.start()
    marker = anthropic_api.script("soak", [report("success", "Soaked.")])
    gh_marker = anthropic_api.script("soak-gh", [report("success", "Triaged.")])
    repo = make_git_repo(tmp / "upstream")
    bot = ServedBot(local_settings(tmp, slack_api.url, anthropic_api.url,
                                   sandbox_image=args.image, max_concurrent_runs=2,
                                   github_webhook_secret=WEBHOOK_SECRET), tmp)
    base, fake = f"http://127.0.0.1:{bot.port}", bot.slack
    traffic, samples = Traffic(), list[Sample]()
    try:
        await bot.start()
        await create(fake, slack_api, ROUTINE, f"Soak. {marker}", repo)
        await create(fake, slack_api, GH_ROUTINE, f"Triage. {gh_marker}", repo)
        answer = (await fake.slash(f'github {GH_ROUTINE} "pull_request.opened"')).json()
        if "now runs on GitHub events matching" not in answer["text"]:
            raise BenchError(f"github trigger refused: {answer['text']}")
        token = json.dumps((await fake.slash(f"token {ROUTINE} soak")).json()).split("```")[1]
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            mix = Mix(base, fake, slack_api, token, traffic, http)
            await drive(args, mix, bot, slack_api, traffic, samples)
            await drain(slack_api, traffic)
    finally:
        await bot.stop()
        await anthropic_api.stop()
        await slack_api.stop()
    return tally(args, bot, traffic, samples)


async def drive(args: argparse.Namespace, mix: Mix, bot: ServedBot,
                slack_api: SlackApiStandIn, traffic: Traffic, samples: list[Sample]) -> None:
    quiet: list[tuple[str, Callable[[], Awaitable[None]], int]] = [
        ("command", mix.command, 6), ("api status", mix.api_status, 3),
        ("view log", mix.view_log, 3), ("app home", mix.home, 2),
        ("slack forged", mix.forged_slash, 1), ("github forged", mix.forged_github, 1)]
    starting: list[tuple[str, Callable[[], Awaitable[None]], int]] = [
        ("slash run", mix.slash_run, 2), ("api trigger", mix.api_trigger, 3),
        ("github", mix.github, 2)]
    proc = bot.proc
    assert proc is not None
    pid, t0 = proc.pid, time.monotonic()
    end, next_sample = t0 + args.minutes * 60, t0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            samples.append(sample(now - t0, pid, traffic))
            next_sample += args.sample_seconds
        collect_results(slack_api, traffic)
        in_flight = len(traffic.run_ids) - len(traffic.results)
        choices = quiet + (starting if in_flight < args.max_in_flight else [])
        name, action, _ = random.choices(choices, weights=[w for *_, w in choices])[0]
        traffic.sent[name] += 1
        try:
            await action()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            traffic.errors[f"{name}: {type(exc).__name__}"] += 1
        if proc.poll() is not None:
            raise BenchError(f"the bot exited during the soak:\n{bot.log()[-3000:]}")
        await asyncio.sleep(args.interval)
    samples.append(sample(time.monotonic() - t0, pid, traffic))


async def drain(slack_api: SlackApiStandIn, traffic: Traffic) -> None:
    """Until every run asked for has its result posted (or the patience runs out)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        collect_results(slack_api, traffic)
        if len(traffic.results) >= len(traffic.run_ids):
            return
        await asyncio.sleep(1)


def tally(args: argparse.Namespace, bot: ServedBot, traffic: Traffic,
          samples: list[Sample]) -> dict[str, Any]:
    settings, instance = bot.settings, bot.settings.instance
    client = docker.from_env()
    try:
        containers = client.containers.list(all=True, filters={
            "label": f"{LABEL_INSTANCE}={instance}"})
        networks = client.networks.list(filters={"label": f"{LABEL_INSTANCE}={instance}"})
    finally:
        client.close()
    workspaces = bot.workspace_root
    engine = sqlalchemy.create_engine(settings.database_url)
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text(
            "SELECT status, count(*) FROM run GROUP BY status")).all()
        statuses: dict[str, int] = {str(status): int(n) for status, n in rows}
        unannounced = connection.execute(sqlalchemy.text(
            "SELECT count(*) FROM run WHERE finished_at IS NOT NULL AND notified_at IS NULL"
        )).scalar_one()
    engine.dispose()
    announced = Counter(m["run_id"] for m in traffic.results)
    not_succeeded = sum(" succeeded" not in m["text"] for m in traffic.results)
    warm = [s for s in samples if s.at_s >= args.warmup_minutes * 60] or samples[-1:]
    return {
        "minutes": args.minutes, "requests": dict(traffic.sent),
        "requests_total": sum(traffic.sent.values()),
        "errors": dict(traffic.errors), "errors_total": sum(traffic.errors.values()),
        "refused_by_rules": dict(traffic.refused),
        "runs_asked": len(traffic.run_ids), "runs_announced": len(announced),
        "runs_announced_twice": sum(n > 1 for n in announced.values()),
        "runs_not_succeeded": not_succeeded, "run_statuses": statuses,
        "bot_log_errors": log_errors(bot.log()),
        "bot_exit_code": None if bot.proc is None else bot.proc.returncode,
        "leftovers": {
            "containers": len(containers), "networks": len(networks),
            "workspaces": len(list(workspaces.iterdir())) if workspaces.exists() else 0,
            "runs_not_finished": sum(n for s, n in statuses.items()
                                     if s in {"queued", "running", "awaiting_approval"}),
            "runs_unannounced": int(unannounced)},
        "rss_warm_mib": warm[0].rss_mib, "rss_end_mib": samples[-1].rss_mib,
        "rss_max_mib": max(s.rss_mib for s in samples),
        "rss_growth_mib_per_minute_after_warmup": round(
            (samples[-1].rss_mib - warm[0].rss_mib)
            / max((samples[-1].at_s - warm[0].at_s) / 60, 1e-9), 3),
        "fds_warm": warm[0].open_fds, "fds_end": samples[-1].open_fds,
        "samples": [s.__dict__ for s in samples],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.25,
                        help="seconds between requests (default 0.25)")
    parser.add_argument("--max-in-flight", type=int, default=4,
                        help="unfinished runs before run-starting requests wait (default 4)")
    parser.add_argument("--sample-seconds", type=float, default=15.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.interval < 0 or args.sample_seconds <= 0:
        parser.error("--minutes and --sample-seconds must be positive, --interval not negative")
    args.warmup_minutes = min(args.warmup_minutes, args.minutes / 2)
    return args


def report_lines(figures: dict[str, Any]) -> None:
    print(f"soak: {figures['minutes']} min, {figures['requests_total']} requests, "
          f"{figures['runs_asked']} runs asked, {figures['runs_announced']} announced")
    print(f"errors: {figures['errors_total']} {figures['errors']}; bot log errors: "
          f"{figures['bot_log_errors']}; runs not succeeded: {figures['runs_not_succeeded']}; "
          f"announced twice: {figures['runs_announced_twice']}")
    print(f"refused by the rules (expected): {figures['refused_by_rules']}")
    print(f"leftovers: {figures['leftovers']}")
    print(f"RSS MiB: warm {figures['rss_warm_mib']}, end {figures['rss_end_mib']}, "
          f"max {figures['rss_max_mib']}, growth after warm-up "
          f"{figures['rss_growth_mib_per_minute_after_warmup']} MiB/min; "
          f"open fds: warm {figures['fds_warm']}, "
          f"end {figures['fds_end']}")
    print("  t(s)   RSS MiB  fds  requests  errors")
    for s in figures["samples"]:
        print(f"{s['at_s']:6.0f}  {s['rss_mib']:8.1f}  {s['open_fds']:3d}  "
              f"{s['requests']:8d}  {s['errors']:6d}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    random.seed(args.seed)
    try:
        with tempfile.TemporaryDirectory(prefix="routines-soak-") as tmp:
            figures = asyncio.run(soak(args, Path(tmp)))
    except (BenchError, AssertionError) as exc:  # the Slack stand-in's waits assert
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with readable_report(args.json):
        report_lines(figures)
    if args.json:
        baseline = {"rss_mib_after_warmup": figures["rss_warm_mib"]}
        print_json("soak", figures, baseline, figures["rss_end_mib"] / figures["rss_warm_mib"],
                   cores=os.cpu_count())
    clean = figures["errors_total"] == 0 and not any(figures["leftovers"].values()) \
        and figures["runs_not_succeeded"] == 0 and figures["bot_log_errors"] == 0
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
