"""Approvals and roles, driven as Slack drives them: signed slash commands, button clicks
and form submissions in, Web API calls out; the approved runs run in real containers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import git
import pytest

from tests.standins.anthropic_api import AnthropicStandIn, report, tool
from tests.standins.environment import make_git_repo
from tests.standins.slack_api import SlackApiStandIn, SlackCall
from tests.support.bots import RESULTS_CHANNEL, BotFactory
from tests.support.http_doors import call
from tests.support.slack_flows import ALICE, BOB, CAROL, DAVE, routine
from tests.support.slack_requests import FakeSlack

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


async def request_for(slack_api: SlackApiStandIn, run_id: str) -> tuple[SlackCall, str]:
    """The approval request message of a run, and its approval id (the buttons' value)."""
    posted = await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                                      contains=f"run #{run_id} of", timeout=10)
    actions = [b for b in posted.params["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]] == ["approve", "reject"]
    return posted, actions[0]["elements"][0]["value"]


async def run_waiting(fake: FakeSlack, name: str, user: str = ALICE) -> str:
    answer = (await fake.slash(f"run {name}", user=user)).json()["text"]
    assert "waits for approval" in answer, answer
    return str(answer).split("#")[1].split(" ")[0]


def update_of(slack_api: SlackApiStandIn, ts: str) -> list[dict[str, Any]]:
    return [c.params for c in slack_api.calls_to("chat.update") if c.params.get("ts") == ts]


async def test_four_eyes_then_an_approver_starts_the_run(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    marker = anthropic_api.script("gated", [report("success", "Did the risky thing.")])
    _, fake = await start_bot(admins=(DAVE,))
    await routine(fake, "risky", f"Do it. {marker}", git_repo, "risk=high",
                  f"approvers=<@{BOB}>")
    run_id = await run_waiting(fake, "risky")
    posted, approval_id = await request_for(slack_api, run_id)
    text = json.dumps(posted.params["blocks"])
    assert "risk high" in text and f"Triggered by manual <@{ALICE}>" in text
    assert "Do it." in text  # the prompt is shown
    assert not anthropic_api.requests_for("gated")  # nothing ran yet

    await fake.click("approve", approval_id, user=ALICE, channel=RESULTS_CHANNEL)
    told = await slack_api.wait_for("chat.postEphemeral", {"user": ALICE}, timeout=5)
    assert "someone else must approve" in told.params["text"]
    await fake.click("approve", approval_id, user=CAROL, channel=RESULTS_CHANNEL)
    told = await slack_api.wait_for("chat.postEphemeral", {"user": CAROL}, timeout=5)
    assert f"Only its approvers (<@{BOB}>) or an admin" in told.params["text"]
    assert update_of(slack_api, _ts(posted)) == []

    await fake.click("approve", approval_id, user=BOB, channel=RESULTS_CHANNEL)
    updated = await slack_api.wait_for("chat.update", contains=f"Approved by <@{BOB}>",
                                       timeout=5)
    assert updated.params["ts"] == _ts(posted)
    assert "actions" not in [b["type"] for b in updated.params["blocks"]]  # buttons gone
    await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                             contains=f"risky run #{run_id}: succeeded", timeout=90)
    history = json.dumps((await fake.slash("audit risky")).json())
    for action in ("approval_requested", "refused", "approve", "run"):
        assert f"*{action}*" in history


async def test_reject_asks_for_a_reason_and_the_run_never_starts(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    git_repo: str,
) -> None:
    bot, fake = await start_bot(admins=(DAVE,))
    await routine(fake, "risky", "Drop the tables. [[scenario:never]]", git_repo, "risk=high")
    run_id = await run_waiting(fake, "risky")
    _, approval_id = await request_for(slack_api, run_id)

    await fake.click("reject", approval_id, user=DAVE, channel=RESULTS_CHANNEL)
    form = await slack_api.wait_for("views.open", contains="approval_reject", timeout=5)
    assert form.params["view"]["private_metadata"] == approval_id
    reply = await fake.submit_view("approval_reject", {"reason": {"value": {
        "type": "plain_text_input", "value": "Not during the freeze."}}}, user=DAVE,
        private_metadata=approval_id)
    assert reply.status == 200 and reply.text == ""
    updated = await slack_api.wait_for("chat.update", contains="Rejected by", timeout=5)
    assert "Not during the freeze." in json.dumps(updated.params["blocks"])
    view = bot.services.runs.get(int(run_id))
    assert view.run.status == "rejected"
    assert view.run.reason == f"rejected by <@{DAVE}>: Not during the freeze."
    await asyncio.sleep(1)
    assert not anthropic_api.requests_for("never")


async def test_two_approvers_clicking_at_once_make_one_decision(
    start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str,
) -> None:
    bot, fake = await start_bot(admins=(DAVE,), max_concurrent_runs=0)
    await routine(fake, "risky", "Do it.", git_repo, "risk=high", f"approvers=<@{BOB}>",
                  f"<@{CAROL}>")
    for _ in range(3):
        slack_api.calls.clear()
        run_id = await run_waiting(fake, "risky")
        posted, approval_id = await request_for(slack_api, run_id)
        replies = await asyncio.gather(
            fake.click("approve", approval_id, user=BOB, channel=RESULTS_CHANNEL),
            fake.click("approve", approval_id, user=CAROL, channel=RESULTS_CHANNEL),
            fake.click("reject", approval_id, user=DAVE, channel=RESULTS_CHANNEL))
        assert [r.status for r in replies] == [200, 200, 200]
        told = await slack_api.wait_for("chat.postEphemeral", contains="Already approved by",
                                        timeout=5)
        decided = bot.services.approvals.get(int(approval_id)).approval
        assert decided.status == "approved" and decided.decided_by in {BOB, CAROL}
        loser = CAROL if decided.decided_by == BOB else BOB
        assert told.params["user"] == loser
        assert f"by <@{decided.decided_by}>" in told.params["text"]
        await slack_api.wait_for("chat.update", {"ts": _ts(posted)}, contains="Approved by",
                                 timeout=10)  # the request message, updated in place
        updates = await _updates(slack_api, _ts(posted))
        assert [u for u in updates if "Approved by" in json.dumps(u)]
        assert not [u for u in updates if "Rejected by" in json.dumps(u)]
        # Dave's reject opened the form; submitting it now is refused, not applied.
        await fake.submit_view("approval_reject", {}, user=DAVE, private_metadata=approval_id)
        await slack_api.wait_for("chat.postEphemeral", {"user": DAVE}, timeout=5)
        assert bot.services.approvals.get(int(approval_id)).approval.status == "approved"


async def test_an_undecided_request_expires_and_says_so(
    start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str,
) -> None:
    bot, fake = await start_bot(approval_timeout_seconds=1, admins=(DAVE,))
    await routine(fake, "risky", "Do it.", git_repo, "risk=high")
    run_id = await run_waiting(fake, "risky")
    posted, approval_id = await request_for(slack_api, run_id)
    updated = await slack_api.wait_for("chat.update", contains="Expired", timeout=15)
    assert updated.params["ts"] == _ts(posted)
    assert bot.services.runs.get(int(run_id)).run.status == "expired"
    await fake.click("approve", approval_id, user=DAVE, channel=RESULTS_CHANNEL)
    told = await slack_api.wait_for("chat.postEphemeral", timeout=5)
    assert "expired" in told.params["text"]


async def test_medium_risk_pushes_only_after_approval_to_a_bot_branch(
    start_bot: BotFactory, slack_api: SlackApiStandIn, anthropic_api: AnthropicStandIn,
    tmp_path: Path,
) -> None:
    work = make_git_repo(tmp_path / "seed")
    bare = tmp_path / "origin.git"
    git.Repo.clone_from(work, bare, bare=True).close()
    marker = anthropic_api.script(
        "publish", [tool("run_shell", command="echo fixed > FIX.md && echo more >> README.md")],
        [report("success", "Added FIX.md.")])
    bot, fake = await start_bot(admins=(DAVE,))
    await routine(fake, "fixer", f"Fix it. {marker}", f"file://{bare}", "risk=medium")
    answer = (await fake.slash("run fixer")).json()["text"]
    run_id = answer.split("#")[1].split(" ")[0]
    await slack_api.wait_for("chat.postMessage", {"channel": RESULTS_CHANNEL},
                             contains=f"fixer run #{run_id}: succeeded", timeout=90)
    posted, approval_id = await request_for(slack_api, run_id)
    shown = json.dumps(posted.params["blocks"])
    assert "publish the changes of" in shown and f"routines/fixer/{run_id}" in shown
    assert "2 file(s) changed" in shown and "FIX.md  +1 -0" in shown
    origin = git.Repo(bare)
    assert [r.name for r in origin.references] == ["main"]  # nothing pushed yet

    await fake.click("approve", approval_id, user=ALICE, channel=RESULTS_CHANNEL)
    await slack_api.wait_for("chat.postEphemeral", {"user": ALICE}, timeout=5)  # four eyes
    await fake.click("approve", approval_id, user=DAVE, channel=RESULTS_CHANNEL)
    await slack_api.wait_for("chat.update", contains="pushed to branch", timeout=30)
    branch = f"routines/fixer/{run_id}"
    assert sorted(r.name for r in origin.references) == ["main", branch]
    pushed = origin.commit(branch)
    assert pushed.tree["FIX.md"].data_stream.read() == b"fixed\n"
    assert origin.commit("main").hexsha == pushed.parents[0].hexsha  # main untouched
    assert bot.services.runs.get(int(run_id)).run.published_ref == f"refs/heads/{branch}"


async def test_roles_are_refused_from_slack_and_from_the_api(
    start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str,
) -> None:
    bot, fake = await start_bot(admins=(DAVE,), max_concurrent_runs=0)
    await routine(fake, "nightly", "Do it.", git_repo)
    for command in ("pause nightly", "schedule nightly every 5m", "token nightly ci2",
                    "set nightly risk=low", "delete nightly"):
        answer = (await fake.slash(command, user=CAROL)).json()
        assert f"Only its owners (<@{ALICE}>) or an admin may" in answer["text"], command
        assert f"<@{ALICE}>" in json.dumps(answer["blocks"])  # a real mention
    assert not bot.services.routines.get("nightly").paused

    shown = json.dumps((await fake.slash("token nightly ci")).json())
    token = shown.split("```")[1]
    status, body, _ = await call(bot, "POST", "/api/v1/routines/nightly/pause", token)
    assert (status, body["paused"]) == (200, True)
    await fake.slash("resume nightly")
    # Ownership moves to Bob: the token Alice made no longer carries an owner's authority.
    await fake.slash(f"set nightly owners=<@{BOB}>")
    status, body, _ = await call(bot, "POST", "/api/v1/routines/nightly/pause", token)
    assert status == 403 and body["error"] == "forbidden"
    # The API says it in plain words: no Slack mentions or mrkdwn in a JSON body.
    assert f"Only its owners ({BOB}) or an admin may pause" in body["message"]
    assert "<@" not in body["message"] and "`" not in body["message"]
    assert not bot.services.routines.get("nightly").paused
    # Running is not an owner's privilege: the API door still queues runs.
    status, body, _ = await call(bot, "POST", "/api/v1/routines/nightly/runs", token,
                                 body=b"{}")
    assert status == 202


async def test_a_user_group_can_hold_a_role(
    start_bot: BotFactory, slack_api: SlackApiStandIn, git_repo: str,
) -> None:
    slack_api.user_groups["S0OPS0001"] = [CAROL]
    _, fake = await start_bot(max_concurrent_runs=0)
    await routine(fake, "nightly", "Do it.", git_repo, "owners=<!subteam^S0OPS0001|@ops>")
    answer = (await fake.slash("pause nightly", user=CAROL)).json()
    assert "paused" in answer["text"], answer
    answer = (await fake.slash("resume nightly", user=ALICE)).json()
    assert "Only its owners (<!subteam^S0OPS0001>) or an admin" in answer["text"]
    assert slack_api.calls_to("usergroups.users.list")


def _ts(posted: SlackCall) -> str:
    return str(posted.response["ts"])


async def _updates(slack_api: SlackApiStandIn, ts: str) -> list[dict[str, Any]]:
    await asyncio.sleep(0.5)
    return update_of(slack_api, ts)

