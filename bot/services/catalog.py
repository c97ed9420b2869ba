"""Routines as code: the routines kept in files, applied to the database and exported back.

`apply` checks every file first (nothing is written when any one is invalid), then writes
every change in one unit of work, with one audit entry per routine changed, under the same
role rule as the other doors (changing or deleting a routine: its owners or an admin). A
routine applied from a file is marked `managed_by` that file, and the other doors refuse to
edit it unless an admin forces them. Applying the same files twice changes nothing.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from bot.core import roles, schedule
from bot.core.roles import Action
from bot.core.routine import network_columns, network_policy
from bot.core.routine_file import (
    Defaults,
    PromptReader,
    RoutineDocument,
    RoutineSpec,
    to_spec,
)
from bot.core.routine_plan import FieldChange, Plan, PlannedRoutine, PlanOutcome, differences
from bot.errors import RoutineFileInvalid, RoutineFileProblem
from bot.services.context import Service
from bot.services.events import ScheduleChanged
from bot.services.routines import delete_in
from bot.store import audit
from bot.store.queries import row_id
from bot.store.tables import GitHubSubscription, Routine, utcnow
from runner.egress_policy import NetworkMode


class CatalogService(Service):
    def export(self, name: str | None = None) -> list[RoutineSpec]:
        """One routine, or every routine in name order, as its file would say it."""
        with self.db.session() as session:
            if name is not None:
                return [spec_of(session, self._require(session, name))]
            rows = session.exec(select(Routine).order_by(col(Routine.name))).all()
            return [spec_of(session, routine) for routine in rows]

    def apply(self, documents: list[RoutineDocument], actor: str, read_prompt: PromptReader,
              prune: bool = False, dry_run: bool = False) -> Plan:
        """Make the database say what the files say; return the diff. A dry run, or any
        refusal (an invalid file, a role, a pending run of a routine to delete), writes
        nothing."""
        specs = self.read(documents, actor, read_prompt)
        with self.db.session() as session:
            current = {r.name: r for r in session.exec(select(Routine)).all()}
            plan = _plan(session, specs, current, prune, applied=not dry_run)
            wanted = {spec.name: (spec, source) for spec, source in specs}
            for item in plan.routines:  # every check before the first write
                self._check_item(item, wanted, current, actor)
            if dry_run:
                return plan
            for item in plan.routines:
                self._write(session, item, wanted, current, actor)
        for item in plan.routines:
            if item.outcome is PlanOutcome.DELETED:
                self.bus.publish(ScheduleChanged(item.name, None))
            elif any(c.key.startswith("schedule.") for c in item.changes) or (
                    item.outcome is PlanOutcome.CREATED and wanted[item.name][0].schedule):
                spec = wanted[item.name][0]
                self.bus.publish(ScheduleChanged(item.name, schedule.Schedule(
                    spec.schedule, spec.timezone) if spec.schedule else None))
        return plan

    def read(self, documents: list[RoutineDocument], actor: str,
             read_prompt: PromptReader) -> list[tuple[RoutineSpec, str]]:
        """Every document as a spec with its file; every problem of every file at once."""
        defaults = Defaults(self.policy.default_model, self.policy.default_timeout_seconds,
                            actor)
        problems: list[RoutineFileProblem] = []
        specs: list[tuple[RoutineSpec, str]] = []
        seen: dict[str, str] = {}
        for doc in documents:
            try:
                spec = to_spec(doc, defaults, self.policy.limits, self.policy.retry_limits,
                               read_prompt)
            except RoutineFileInvalid as exc:
                problems.extend(exc.problems)
                continue
            if spec.name in seen:
                problems.append(doc.problem("name", f"also in {seen[spec.name]}"))
                continue
            seen[spec.name] = doc.source
            specs.append((spec, doc.source))
        if problems:
            raise RoutineFileInvalid(problems)
        return specs

    def _check_item(self, item: PlannedRoutine, wanted: dict[str, tuple[RoutineSpec, str]],
                    current: dict[str, Routine], actor: str) -> None:
        """The role rule of the other doors: changing or deleting needs the owners or an
        admin; giving a routine full network access, an admin."""
        routine = current.get(item.name)
        if item.outcome in {PlanOutcome.CHANGED, PlanOutcome.DELETED}:
            self._check(actor, Action.DELETE if item.outcome is PlanOutcome.DELETED
                        else Action.CHANGE, routine)
        if _gives_full_network(item, wanted):
            self._check(actor, Action.FULL_NETWORK, routine)

    def _write(self, session: Session, item: PlannedRoutine,
               wanted: dict[str, tuple[RoutineSpec, str]], current: dict[str, Routine],
               actor: str) -> None:
        if item.outcome is PlanOutcome.DELETED:
            delete_in(session, current[item.name], actor, "pruned: not in the files")
            return
        if item.outcome not in {PlanOutcome.CREATED, PlanOutcome.CHANGED}:
            return
        spec, source = wanted[item.name]
        routine = current.get(item.name) or Routine(
            name=spec.name, prompt="", repo_url="", channel_id="", model="",
            timeout_seconds=0, max_turns=self.policy.max_turns, created_by=actor)
        rescheduled = (routine.schedule, routine.schedule_tz) != (spec.schedule, spec.timezone)
        _columns(routine, spec, source)
        if rescheduled and spec.schedule:
            routine.last_fire_at = utcnow()  # fires before now are not owed
        session.add(routine)
        session.flush()
        _listen(session, routine, spec.github, actor)
        if item.outcome is PlanOutcome.CREATED:
            audit.record(session, actor, "create", routine.name, f"from {source}")
        else:
            audit.record(session, actor, "change", routine.name,
                         f"from {source}: " + ", ".join(c.key for c in item.changes))
        if _gives_full_network(item, wanted):
            audit.record(session, actor, "network_full", routine.name, "network=full")


def _gives_full_network(item: PlannedRoutine, wanted: dict[str, tuple[RoutineSpec, str]]) -> bool:
    """Created with, or changed to, `network: full`."""
    if item.name not in wanted or wanted[item.name][0].network != NetworkMode.FULL.value:
        return False
    return item.outcome is PlanOutcome.CREATED or any(c.key == "network" for c in item.changes)


def spec_of(session: Session, routine: Routine) -> RoutineSpec:
    """A routine as stored, in the form its file would give."""
    filters = session.exec(select(GitHubSubscription.spec).where(
        GitHubSubscription.routine_id == routine.id)).all()
    return RoutineSpec(
        name=routine.name, prompt=routine.prompt, repository=routine.repo_url,
        channel=routine.channel_id, model=routine.model,
        timeout_seconds=routine.timeout_seconds, owners=roles.split(routine.owners),
        branch=routine.branch, setup=routine.setup_script, schedule=routine.schedule,
        timezone=routine.schedule_tz, github=tuple(sorted(filters)),
        payload_template=routine.payload_template, risk=routine.risk,
        approvers=roles.split(routine.approvers), max_runs_per_day=routine.max_runs_per_day,
        max_concurrent=routine.max_concurrent, when_busy=routine.busy_policy,
        max_tokens_per_run=routine.max_tokens_per_run, retry_attempts=routine.retry_attempts,
        retry_backoff_seconds=routine.retry_backoff_seconds,
        retry_agent_failures=routine.retry_agent_failures, network=routine.egress.describe(),
        engine=routine.engine)


def _plan(session: Session, specs: list[tuple[RoutineSpec, str]],
          current: dict[str, Routine], prune: bool, applied: bool) -> Plan:
    planned: list[PlannedRoutine] = []
    for spec, source in specs:
        routine = current.get(spec.name)
        if routine is None:
            planned.append(PlannedRoutine(spec.name, PlanOutcome.CREATED, source))
            continue
        changes = differences(spec_of(session, routine), spec)
        if routine.managed_by != source:
            changes.append(FieldChange("managed_by", routine.managed_by, source))
        outcome = PlanOutcome.CHANGED if changes else PlanOutcome.UNCHANGED
        planned.append(PlannedRoutine(spec.name, outcome, source, tuple(changes)))
    named = {spec.name for spec, _ in specs}
    for name in current.keys() - named:
        planned.append(PlannedRoutine(name, PlanOutcome.DELETED if prune else PlanOutcome.KEPT))
    return Plan(tuple(sorted(planned, key=lambda p: p.name)), applied)


def _columns(routine: Routine, spec: RoutineSpec, source: str) -> None:
    routine.prompt, routine.repo_url, routine.branch = spec.prompt, spec.repository, spec.branch
    routine.setup_script, routine.channel_id = spec.setup, spec.channel
    routine.model, routine.timeout_seconds = spec.model, spec.timeout_seconds
    routine.payload_template = spec.payload_template
    routine.schedule, routine.schedule_tz = spec.schedule, spec.timezone
    routine.risk, routine.owners = spec.risk, roles.join(spec.owners)
    routine.approvers = roles.join(spec.approvers)
    routine.max_runs_per_day, routine.max_concurrent = spec.max_runs_per_day, spec.max_concurrent
    routine.busy_policy, routine.max_tokens_per_run = spec.when_busy, spec.max_tokens_per_run
    routine.retry_attempts = spec.retry_attempts
    routine.retry_backoff_seconds = spec.retry_backoff_seconds
    routine.retry_agent_failures = spec.retry_agent_failures
    for column, value in network_columns(network_policy(spec.network)).items():
        setattr(routine, column, value)
    routine.engine = spec.engine
    routine.managed_by = source


def _listen(session: Session, routine: Routine, wanted: tuple[str, ...], actor: str) -> None:
    """The routine's GitHub filters become exactly `wanted` (kept ones keep their row)."""
    rows = session.exec(select(GitHubSubscription).where(
        GitHubSubscription.routine_id == routine.id)).all()
    for row in rows:
        if row.spec not in wanted:
            session.delete(row)
    have = {row.spec for row in rows}
    session.add_all(GitHubSubscription(routine_id=row_id(routine), spec=spec, created_by=actor)
                    for spec in wanted if spec not in have)
    session.flush()


__all__ = ["CatalogService", "spec_of"]
