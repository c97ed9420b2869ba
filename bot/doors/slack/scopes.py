"""The bot token scopes the bot uses (manifest.json declares exactly these; doctor checks them).

`commands` for `/routine`, `chat:write` and `chat:write.public` for results, approvals and
digests in any channel, `usergroups:read` to resolve `subteam:` owners and approvers."""

from __future__ import annotations

BOT_SCOPES = frozenset({"commands", "chat:write", "chat:write.public", "usergroups:read"})
