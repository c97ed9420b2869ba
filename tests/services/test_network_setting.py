"""A routine's network setting through the services on a real database: stored as typed,
`full` only by an admin and audited, a bad value changes nothing, the run spec carries the
policy in force (trusted: the operator's list when the run starts), and a run's view counts
the requests the egress proxy refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.core.redaction import Redactor
from bot.core.routine import RoutineDraft, RoutineLimits, parse_changes
from bot.core.trigger import manual
from bot.errors import Forbidden, ValidationFailed
from bot.services import ServicePolicy, Services
from bot.store import schema
from bot.store.database import Database
from runner.egress_policy import EGRESS_EVENT, EgressPolicy, NetworkMode

ADMIN, OWNER = "U0ADMIN01", "U0OWNER01"
TRUSTED = ("registry.corp.example", "*.mirror.corp.example")

pytestmark = pytest.mark.postgres


@pytest.fixture
def services(database_url: str) -> Iterator[Services]:
    db = Database(database_url)
    schema.upgrade(db)
    policy = ServicePolicy("m", 60, RoutineLimits(1, 99, True), 5, triggers_per_minute=1000,
                           admins=(ADMIN,), trusted_hosts=TRUSTED)
    yield Services(db, policy, Redactor(()), lambda group: frozenset())
    db.close()


def draft(name: str, network: str = "") -> RoutineDraft:
    return RoutineDraft(name=name, prompt="p", repo_url="file:///r", channel_id="C0123ABC",
                        network=network)


def spec_policy(services: Services, name: str) -> EgressPolicy:
    view = services.triggers.trigger(name, manual(OWNER)).view
    return EgressPolicy.from_spec(services.runs.spec(view).egress)


def audited(services: Services, action: str) -> list[str]:
    return [f"{e.actor} {e.routine} {e.details}" for e in services.audit.entries(limit=100)
            if e.action == action]


def test_a_routine_is_trusted_by_default_and_its_runs_get_the_operators_list(
        services: Services) -> None:
    routine = services.routines.create(draft("plain"), OWNER)
    assert (routine.network, routine.network_hosts) == (NetworkMode.TRUSTED, "")
    assert spec_policy(services, "plain") == EgressPolicy(NetworkMode.TRUSTED, TRUSTED)
    assert audited(services, "create") == [f"{OWNER} plain repo file:///r, network trusted"]


def test_a_custom_list_is_stored_and_carried_by_the_spec(services: Services) -> None:
    services.routines.create(draft("custom", "PyPI.org, *.Corp.example"), OWNER)
    assert services.routines.get("custom").egress == EgressPolicy(
        NetworkMode.CUSTOM, ("pypi.org", "*.corp.example"))
    assert spec_policy(services, "custom") == EgressPolicy(
        NetworkMode.CUSTOM, ("pypi.org", "*.corp.example"))


def test_full_is_only_for_an_admin_and_audited(services: Services) -> None:
    with pytest.raises(ValidationFailed) as refused:
        services.routines.create(draft("wide", "full"), OWNER)
    assert refused.value.field_errors == {
        "network": f"Only admins may give a routine full network access (admins: {ADMIN})."}
    assert [o.routine.name for o in services.routines.overviews()] == []
    assert audited(services, "refused") == [
        f"{OWNER} None give a routine full network access: Only admins may give a routine "
        f"full network access (admins: {ADMIN})."]

    services.routines.create(draft("wide", "full"), ADMIN)
    assert services.routines.get("wide").network is NetworkMode.FULL
    assert spec_policy(services, "wide") == EgressPolicy(NetworkMode.FULL)
    assert audited(services, "network_full") == [f"{ADMIN} wide network=full"]


def test_set_network_obeys_the_same_rules_and_a_refusal_changes_nothing(
        services: Services) -> None:
    services.routines.create(draft("demo"), OWNER)

    services.routines.change("demo", parse_changes(["network=none"]), OWNER)
    assert services.routines.get("demo").network is NetworkMode.NONE
    assert spec_policy(services, "demo") == EgressPolicy(NetworkMode.NONE)
    services.routines.change("demo", parse_changes(["network=pypi.org", "*.corp.example"]),
                             OWNER)
    assert services.routines.get("demo").egress.describe() == "pypi.org, *.corp.example"

    with pytest.raises(Forbidden):
        services.routines.change("demo", parse_changes(["network=full"]), OWNER)
    assert services.routines.get("demo").network is NetworkMode.CUSTOM
    with pytest.raises(ValidationFailed) as bad:
        parse_changes(["network=https://pypi.org/simple"])
    assert "https://pypi.org/simple: write the host alone, without a scheme" in \
        bad.value.field_errors["network"]

    services.routines.change("demo", parse_changes(["network=full"]), ADMIN)
    routine = services.routines.get("demo")
    assert (routine.network, routine.network_hosts) == (NetworkMode.FULL, "")
    assert audited(services, "network_full") == [f"{ADMIN} demo network=full"]
    assert any("give a routine full network access" in entry
               for entry in audited(services, "refused"))


def test_a_runs_view_counts_the_requests_the_proxy_refused(services: Services) -> None:
    services.routines.create(draft("counted", "pypi.org"), OWNER)
    run_id = services.triggers.trigger("counted", manual(OWNER)).view.run.id
    assert run_id is not None
    host = {"type": EGRESS_EVENT, "source": "host", "method": "CONNECT", "port": 443}
    services.runs.record_event(run_id, 1, {**host, "host": "pypi.org", "allowed": True})
    services.runs.record_event(run_id, 2, {**host, "host": "evil.example", "allowed": False,
                                           "reason": "host_not_allowed"})
    services.runs.record_event(run_id, 3, {**host, "host": "meta.example", "allowed": False,
                                           "reason": "address_not_allowed"})
    # a line the container wrote, claiming the type, is not the proxy's
    services.runs.record_event(run_id, 4, {"type": EGRESS_EVENT, "host": "x", "allowed": False})
    assert services.runs.get(run_id).egress_refusals == 2
