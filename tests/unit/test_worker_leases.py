"""The pure parts of scale-out's run leases and container ownership: the words a lapsed
lease fails its run with, how often a process beats, and the labels and names that keep
workers sharing one engine apart."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from bot.core.worker import LapsedLease, beat_interval
from runner.contract import LABEL_INSTANCE, LABEL_WORKER
from runner.host.pool import owner_filter, owner_labels, worker_slug
from runner.host.sandbox import SandboxConfig


def config(worker: str) -> SandboxConfig:
    return SandboxConfig(image="img", workspace_root=Path("/nowhere"), instance="abc",
                         worker=worker)


def test_a_lapsed_lease_names_the_worker_and_its_last_heartbeat() -> None:
    lapse = LapsedLease(7, "box-1/w1", datetime(2026, 12, 3, 12, 0, 3, tzinfo=UTC))
    assert lapse.reason == ("interrupted: worker box-1/w1 stopped renewing its lease "
                            "(last heartbeat 12:00:03Z)")


def test_a_lapsed_lease_of_a_worker_that_never_registered_says_so() -> None:
    assert LapsedLease(7, "box-1/w1", None).reason == (
        "interrupted: worker box-1/w1 stopped renewing its lease (never registered)")


def test_three_beats_per_lease() -> None:
    assert beat_interval(30) == 10
    assert beat_interval(3) == 1


def test_containers_carry_their_worker_and_are_filtered_by_it() -> None:
    assert owner_labels(config("box-1/w1")) == {LABEL_INSTANCE: "abc",
                                                LABEL_WORKER: "box-1/w1"}
    assert owner_filter(config("box-1/w1")) == [f"{LABEL_INSTANCE}=abc",
                                                f"{LABEL_WORKER}=box-1/w1"]


def test_without_a_worker_only_the_instance_is_labelled() -> None:
    assert owner_labels(config("")) == {LABEL_INSTANCE: "abc"}
    assert worker_slug(config("")) == ""


def test_two_workers_warm_names_differ_and_neither_prefixes_the_other() -> None:
    one, two = worker_slug(config("box-1/w1")), worker_slug(config("box-1/w10"))
    assert one == "box-1-w1-" and two == "box-1-w10-"
    assert not two.startswith(one) and not one.startswith(two)
