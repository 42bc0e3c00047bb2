"""WorkerSettings: every worker option checked once (ConfigError naming it), the defaults
resolved, and the settings carried whole, as JSON, to each `pgq work --processes` child.

Pure: no database is needed to build, check or copy settings.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

import pgq
from pgq import ConfigError
from pgq.retention import Retention
from pgq.worker.settings import WorkerSettings

DSN = "host=db.example.com port=6432 user=app dbname=shop password=s3cret"

# pgq.Worker's defaults, spelt out: WorkerSettings.create takes every option.
DEFAULTS: dict[str, Any] = {
    "schema": None, "queues": None, "concurrency": 10, "poll_seconds": 1.0,
    "lease_seconds": 30.0, "poll_only": False, "shutdown_grace_seconds": 30.0,
    "rescue_interval_seconds": None, "retention": None, "prune_interval_seconds": 60.0,
    "metrics_port": None, "metrics_host": "127.0.0.1", "name": None,
    "synchronous_commit": False, "queue_weights": None, "strict_queue_order": False,
}  # fmt: skip


def create(dsn: str = DSN, **overrides: Any) -> WorkerSettings:
    return WorkerSettings.create(dsn, **{**DEFAULTS, **overrides})


# (option, bad value, what the message must say)
BAD_SETTINGS: list[tuple[str, Any, str]] = [
    ("concurrency", 0, "concurrency must be >= 1 and <= 10000, got 0"),
    ("concurrency", 10_001, "concurrency must be >= 1 and <= 10000, got 10001"),
    ("concurrency", True, "concurrency must be .* got True"),
    ("concurrency", "10", "concurrency must be .* got '10'"),
    ("concurrency", 2.5, "concurrency must be a whole number, got 2.5"),
    ("poll_seconds", 0, "poll interval must be > 0 seconds"),
    ("poll_seconds", float("nan"), "poll interval must be > 0 seconds .* got nan"),
    ("poll_seconds", 86_401, "poll interval must be .* <= 86400 seconds, got 86401"),
    ("lease_seconds", 0.4, "lease must be >= 0.5 seconds"),
    ("lease_seconds", float("inf"), "lease must be .* got inf"),
    ("shutdown_grace_seconds", -1, "shutdown grace must be >= 0 seconds"),
    ("rescue_interval_seconds", 0, "rescue interval must be > 0 seconds"),
    ("rescue_interval_seconds", -5.0, "rescue interval must be > 0 seconds"),
    ("prune_interval_seconds", 0, "prune interval must be > 0 seconds .* got 0"),
    ("prune_interval_seconds", float("nan"), "prune interval must be > 0 seconds .* got nan"),
    ("prune_interval_seconds", None, "prune interval must be > 0 seconds .* got None"),
    ("metrics_port", 65_536, "metrics port must be >= 0 and <= 65535, got 65536"),
    ("metrics_port", -1, "metrics port must be >= 0"),
    ("metrics_port", 8080.5, "metrics port must be a whole number, got 8080.5"),
    ("queues", {}, "queues is empty: pass None to serve every queue"),
    ("queues", {"bad queue": None}, "invalid queue name 'bad queue'"),
    ("queues", {"": 2}, "invalid queue name ''"),
    ("queues", {"emails": 0}, "queue 'emails': concurrency must be >= 1"),
    ("queues", {"emails": 10_001}, "queue 'emails': concurrency must be .* <= 10000"),
    ("queues", {"emails": 1.5}, "queue 'emails': concurrency must be a whole number, got 1.5"),
    ("name", "", "invalid worker name ''"),
    ("name", "host\n1", "invalid worker name 'host\\\\n1': .* no control characters"),
    ("name", "w" * 201, "invalid worker name .* 1 to 200 characters"),
]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [pytest.param(o, v, m, id=f"{o}={v!r:.20}") for o, v, m in BAD_SETTINGS],
)
def test_a_bad_option_is_refused_with_a_config_error_naming_it(
    option: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        create(**{option: value})


def test_an_unparsable_dsn_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ConfigError, match="invalid DSN") as refused:
        create("host=db password=s3cret nonsense")

    assert "s3cret" not in str(refused.value)


def test_worker_refuses_the_same_bad_options_before_it_touches_a_database() -> None:
    app = pgq.App()

    @app.task
    def noop() -> None: ...

    # Nothing listens at this address: a check that needed the database would hang or fail.
    with pytest.raises(ConfigError, match=r"lease must be >= 0\.5 seconds"):
        pgq.Worker(app, "host=192.0.2.1 connect_timeout=1", lease_seconds=0.1)


def test_options_at_their_limits_are_accepted() -> None:
    low = create(
        concurrency=1, lease_seconds=0.5, shutdown_grace_seconds=0, metrics_port=0,
        queues={"q" * 128: 1}, name="w" * 200,
    )  # fmt: skip
    high = create(
        concurrency=10_000, poll_seconds=86_400, lease_seconds=86_400, metrics_port=65_535,
        queues={"emails": 10_000, "reports": None},
    )  # fmt: skip

    assert (low.concurrency, low.lease_seconds, low.metrics_port) == (1, 0.5, 0)
    assert (high.concurrency, high.metrics_port) == (10_000, 65_535)
    assert high.queues == {"emails": 10_000, "reports": None}


def test_defaults_are_resolved_once() -> None:
    settings = create()

    assert settings.schema == "pgq"
    assert settings.queues is None
    assert settings.retention == Retention()
    assert settings.rescue_interval_seconds == 15.0, "half the 30 s lease"
    assert create(lease_seconds=1.0).rescue_interval_seconds == 1.0, "never under a second"
    assert create(rescue_interval_seconds=4.0).rescue_interval_seconds == 4.0
    assert re.fullmatch(r".+:\d+:[0-9a-f]{6}", settings.name), settings.name
    assert create().name != settings.name, "each worker gets a name of its own"
    assert create(name="billing-1").name == "billing-1"


def test_the_dsn_gets_the_workers_connection_defaults_where_it_is_silent() -> None:
    params = conninfo_to_dict(create(DSN + " connect_timeout=3").dsn)

    assert params["connect_timeout"] == "3", "the DSN's own value wins"
    assert params["keepalives"] == "1"
    assert (params["host"], params["dbname"], params["password"]) == (
        "db.example.com", "shop", "s3cret",
    )  # fmt: skip


def test_settings_are_frozen_and_do_not_share_the_callers_queue_mapping() -> None:
    queues: dict[str, int | None] = {"emails": 2}
    settings = create(queues=queues)
    queues["reports"] = None

    assert settings.queues == {"emails": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.concurrency = 99  # type: ignore[misc]


# -- carried to --processes children ----------------------------------------------------------


def every_option_changed() -> WorkerSettings:
    """Settings in which no field holds its default, so a dropped field would show."""
    return create(
        "host=127.0.0.1 port=5544 user=w dbname=jobs password=pw",
        schema="jobs_schema", queues={"emails": 3, "reports": None}, concurrency=7,
        poll_seconds=0.25, lease_seconds=12.5, poll_only=True, shutdown_grace_seconds=4.0,
        rescue_interval_seconds=2.5,
        retention=Retention(succeeded_seconds=60.0, cancelled_seconds=None, dead_seconds=3600.0),
        prune_interval_seconds=9.0, metrics_port=9400, metrics_host="0.0.0.0",
        name="parent-worker", synchronous_commit=True, queue_weights={"emails": 5},
    )  # fmt: skip


def strict_order_changed() -> WorkerSettings:
    """The option that excludes queue weights: in strict queue order."""
    return create(queues={"emails": None, "reports": None}, strict_queue_order=True)


def test_every_default_is_changed_in_the_round_trip_fixtures() -> None:
    fixtures = [every_option_changed(), strict_order_changed()]
    defaults = create()

    same = [
        field.name
        for field in dataclasses.fields(WorkerSettings)
        if all(
            getattr(changed, field.name) == getattr(defaults, field.name) for changed in fixtures
        )
    ]
    assert same == []


@pytest.mark.parametrize("original", [every_option_changed(), strict_order_changed()])
def test_json_round_trip_keeps_every_setting_but_the_name(original: WorkerSettings) -> None:
    restored = WorkerSettings.from_json(original.to_json())

    assert restored.name != original.name
    assert dataclasses.replace(restored, name=original.name) == original
    assert isinstance(restored.retention, Retention)


def test_each_child_built_from_the_same_json_gets_a_name_of_its_own() -> None:
    text = create(name="supervisor").to_json()

    names = {WorkerSettings.from_json(text).name for _ in range(3)}

    assert len(names) == 3
    assert "supervisor" not in names


def test_the_json_holds_the_dsn_so_children_need_nothing_on_their_command_line() -> None:
    settings = create()

    assert json.loads(settings.to_json())["dsn"] == settings.dsn


def test_child_n_serves_metrics_on_the_given_port_plus_n() -> None:
    settings = create(metrics_port=9100)

    ports = [settings.for_child(slot).metrics_port for slot in range(3)]

    assert ports == [9100, 9101, 9102]
    assert dataclasses.replace(settings.for_child(2), metrics_port=9100) == settings


def test_children_serve_no_metrics_when_the_worker_serves_none() -> None:
    settings = create()

    assert settings.for_child(3) == settings
    assert settings.for_child(3).metrics_port is None


def test_summary_says_how_the_worker_runs() -> None:
    assert create(queues={"emails": 2, "reports": None}, concurrency=4).summary() == (
        "queues emails=2, reports, concurrency 4, lease 30s, listening"
    )
    assert create(poll_only=True, poll_seconds=0.5).summary() == (
        "queues all, concurrency 10, lease 30s, polling every 0.5s"
    )
