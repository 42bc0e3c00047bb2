"""compose.yaml runs the demo end to end: checked without Docker.

No Docker engine runs here, so the file is checked in parts: against the Compose
specification and by Compose's own ``config``; every file it mounts or builds
from exists and is in the build context; what Prometheus and Grafana read
matches what the worker serves and where the files are mounted. Then the demo
runs for real: the services' own commands, from a copy of what the Dockerfile
puts in the image, against a fresh database.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ruamel.yaml import YAML

from pgcluster import free_port
from pgq.tasks import load_app
from worker_helpers import REPO_ROOT, wait_until

COMPOSE_FILE = REPO_ROOT / "compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
DEPLOYMENT_DOCS = REPO_ROOT / "docs" / "howto" / "deployment.md"

VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?P<rest>[^}]*)\}")
DOCUMENTED_COMMAND = re.compile(r"(?:\b[A-Z_]+=\S+ )*docker compose [^\n#`]*")

# The demo's app, as compose.yaml names it when PGQ_APP is not set.
DEMO_APP = "shop.tasks:app"


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> Any:
    return load_yaml(COMPOSE_FILE)


def with_defaults(text: str) -> str:
    """``text`` with each ``${VAR:-default}`` as Compose reads it when VAR is not set."""
    return VARIABLE.sub(lambda match: match["rest"].removeprefix(":-"), text)


def option(command: list[str], name: str) -> str:
    """The value of ``--name=value`` in a service's command."""
    values = [arg.partition("=")[2] for arg in command if arg.startswith(f"{name}=")]
    assert len(values) == 1, f"{name}= appears {len(values)} times in {command}"
    return values[0]


def replace_option(command: list[str], name: str, value: str) -> list[str]:
    option(command, name)  # fails if the command lacks it
    return [f"{name}={value}" if arg.startswith(f"{name}=") else arg for arg in command]


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts: container path -> host path (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (REPO_ROOT / source).resolve()
    return mounts


# -- The compose file as Compose reads it ---------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE_FILE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def compose_command() -> list[str]:
    """Docker Compose v2 (``docker compose``) if present, else Debian's ``docker-compose``."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "these tests need Docker Compose's `config` command (no Docker engine): "
        "install Docker Compose, or on Debian `apt-get install docker-compose`"
    )


def compose_config(environment: dict[str, str]) -> Any:
    """compose.yaml resolved by Compose itself, with ``environment`` as the only variables."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **environment}
    result = subprocess.run(
        [*compose_command(), "--file", str(COMPOSE_FILE), "config"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return YAML(typ="safe").load(result.stdout)


def test_plain_docker_compose_up_needs_no_variable_and_runs_the_demo() -> None:
    config = compose_config({})
    assert set(config["services"]) == {
        "postgres", "migrate", "worker", "shop", "prometheus", "grafana",
    }  # fmt: skip
    assert all("profiles" not in service for service in config["services"].values())
    assert config["services"]["worker"]["command"][:2] == ["work", DEMO_APP]


def test_pgq_app_runs_your_app_instead_of_the_demo() -> None:
    config = compose_config({"PGQ_APP": "myproject.tasks:app"})
    assert config["services"]["worker"]["command"][:2] == ["work", "myproject.tasks:app"]


def test_every_variable_has_a_default_or_is_documented() -> None:
    docs = DEPLOYMENT_DOCS.read_text()
    for match in VARIABLE.finditer(COMPOSE_FILE.read_text()):
        has_default = match["rest"].startswith(":-") and len(match["rest"]) > 2
        assert has_default or f"`{match['name']}`" in docs, f"{match[0]} has no default"


def test_documented_commands_name_real_services_and_variables(compose: Any) -> None:
    commands = DOCUMENTED_COMMAND.findall(DEPLOYMENT_DOCS.read_text())
    commands += DOCUMENTED_COMMAND.findall(COMPOSE_FILE.read_text())
    assert any(command.strip() == "docker compose up --build" for command in commands)
    variables = {match["name"] for match in VARIABLE.finditer(COMPOSE_FILE.read_text())}
    profiles = {p for service in compose["services"].values() for p in service.get("profiles", [])}
    for command in commands:
        words = command.split()
        for word in words[: words.index("docker")]:
            assert word.partition("=")[0] in variables, f"{command!r}: compose never reads {word}"
        for flag, value in itertools.pairwise(words):
            if flag == "--scale":
                assert value.partition("=")[0] in compose["services"], f"{command!r}: {value}"
            if flag == "--profile":
                assert value in profiles, f"{command!r}: no service has profile {value!r}"


def test_every_mounted_file_and_build_context_exists(compose: Any) -> None:
    for name, service in compose["services"].items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name} mounts {source} at {target}: it does not exist"
        if "build" in service:
            assert (REPO_ROOT / service["build"] / "Dockerfile").is_file(), name


# -- The build context and the image ---------------------------------------------------------


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker matches it: ``*`` stops at ``/``, ``**`` does not."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        else:
            parts.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(pattern re-includes, regex) for each line of .dockerignore."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            include = line.startswith("!")
            rules.append((include, pattern_regex(line.removeprefix("!").strip("/"))))
    return rules


def in_build_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent directory decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for include, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            included = include
    return included


def context_files(source: Path, rules: list[tuple[bool, re.Pattern[str]]]) -> list[Path]:
    """The files under ``source`` (a file or a directory) that the build context holds."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    return [f for f in files if in_build_context(f.relative_to(REPO_ROOT).as_posix(), rules)]


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    destination: str  # absolute, in the image


def dockerfile_copies() -> tuple[list[Copy], str]:
    """The Dockerfile's COPY instructions, and the last WORKDIR (where the services run)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    copies, workdir = [], "/"
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "WORKDIR":
            workdir = os.path.join(workdir, rest.strip())
        elif instruction.upper() == "COPY":
            args = [arg for arg in rest.split() if not arg.startswith("--")]
            destination = os.path.join(workdir, args[-1])
            if args[-1].endswith("/"):
                destination += "/"
            copies.append(Copy(args[:-1], destination))
    return copies, workdir


def build_image_files(root: Path) -> Path:
    """Copy into ``root`` what the Dockerfile's COPYs put in the image; returns the WORKDIR."""
    copies, workdir = dockerfile_copies()
    rules = dockerignore_rules()
    for copy in copies:
        for name in copy.sources:
            source = REPO_ROOT / name
            for file in context_files(source, rules):
                if source.is_dir():
                    target = Path(copy.destination) / file.relative_to(source)
                elif copy.destination.endswith("/") or len(copy.sources) > 1:
                    target = Path(copy.destination) / file.name
                else:
                    target = Path(copy.destination)
                target = root / target.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target)
    image_workdir = root / Path(workdir).relative_to("/")
    image_workdir.mkdir(parents=True, exist_ok=True)
    return image_workdir


def test_every_dockerfile_copy_source_is_in_the_build_context() -> None:
    copies, _ = dockerfile_copies()
    rules = dockerignore_rules()
    assert copies
    for copy in copies:
        for name in copy.sources:
            source = REPO_ROOT / name
            assert source.exists(), f"COPY {name}: no such file in the repository"
            assert context_files(source, rules), f"COPY {name}: .dockerignore leaves it out"


def test_dockerignore_keeps_the_virtualenv_and_everything_unneeded_out() -> None:
    rules = dockerignore_rules()
    for path in [".venv/bin/python", ".git/HEAD", "tests/conftest.py", "docs/index.md",
                 "benchmarks/run.py", "src/pgq/__pycache__/tasks.cpython-311.pyc",
                 "examples/compose_demo/shop/__pycache__/tasks.cpython-311.pyc"]:  # fmt: skip
        assert not in_build_context(path, rules), path
    for path in ["pyproject.toml", "src/pgq/tasks.py", "migrations/env.py",
                 "examples/compose_demo/shop/tasks.py"]:  # fmt: skip
        assert in_build_context(path, rules), path


@pytest.fixture
def image_workdir(tmp_path: Path) -> Iterator[Path]:
    """What the image holds, copied as the Dockerfile does; cleans up the modules it imported."""
    yield build_image_files(tmp_path / "image")
    for name in [name for name in sys.modules if name == "shop" or name.startswith("shop.")]:
        del sys.modules[name]


def test_the_worker_imports_its_app_from_what_the_image_holds(
    compose: Any, image_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(image_workdir)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_app adds the working directory
    app_path = with_defaults(compose["services"]["worker"]["command"][1])
    assert app_path == DEMO_APP
    app = load_app(app_path)
    assert set(app.tasks) == {"charge_card", "send_confirmation"}


# -- Prometheus and Grafana ------------------------------------------------------------------


def test_prometheus_scrapes_every_worker_on_its_metrics_port(compose: Any) -> None:
    worker = compose["services"]["worker"]["command"]
    mounts = bind_mounts(compose["services"]["prometheus"])
    config = load_yaml(mounts["/etc/prometheus/prometheus.yml"])
    [scrape] = config["scrape_configs"]
    [discovery] = scrape["dns_sd_configs"]
    assert discovery["names"] == ["worker"]
    assert str(discovery["port"]) == option(worker, "--metrics-port")
    assert scrape.get("metrics_path", "/metrics") == "/metrics"
    # Another container scrapes it: the worker's own loopback would not do.
    assert option(worker, "--metrics-host") == "0.0.0.0"


def test_grafana_reads_its_provisioning_and_the_dashboard_where_they_are_mounted(
    compose: Any,
) -> None:
    grafana = compose["services"]["grafana"]
    mounts = bind_mounts(grafana)
    by_source = {source.name: target for target, source in mounts.items()}
    provisioning = "/etc/grafana/provisioning"
    assert by_source["datasources.yml"].startswith(f"{provisioning}/datasources/")
    assert by_source["dashboards.yml"].startswith(f"{provisioning}/dashboards/")

    [provider] = load_yaml(REPO_ROOT / "deploy/grafana/dashboards.yml")["providers"]
    dashboards_dir = mounts[provider["options"]["path"]]
    assert (dashboards_dir / "pgq-dashboard.json").is_file()
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (mounts[str(home.parent)] / home.name).is_file()

    [datasource] = load_yaml(REPO_ROOT / "deploy/grafana/datasources.yml")["datasources"]
    published = {port.rpartition(":")[2] for port in compose["services"]["prometheus"]["ports"]}
    assert datasource["url"] in {f"http://prometheus:{port}" for port in published}


# -- The demo, run as compose runs it --------------------------------------------------------


class Services:
    """The demo's services as subprocesses, each in its own process group, logging to a file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], cwd: Path, dsn: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PGQ_DSN": dsn, "PYTHONUNBUFFERED": "1"}
        with (self.log_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.started[name] = process
        return process

    def assert_running(self, *names: str) -> None:
        for name in names:
            code = self.started[name].poll()
            assert code is None, f"{name} exited with {code}:\n{self.log(name)}"

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def kill_all(self) -> None:
        for process in self.started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    running = Services(tmp_path)
    try:
        yield running
    finally:
        running.kill_all()
        for name in running.started:
            print(f"----- {name} -----\n{running.log(name)}")  # shown when the test failed


def first_orders_finished(dsn: str, orders: int, services: Services) -> Callable[[], bool]:
    """True once the shop's first ``orders`` orders have both jobs succeeded or dead."""

    def check() -> bool:
        services.assert_running("worker", "shop")  # fail now, not at the deadline
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pgq.jobs WHERE (args->>'order_id')::int <= %s"
                " AND status IN ('succeeded', 'dead')",
                [orders],
            ).fetchone()
        return row is not None and row[0] == 2 * orders

    return check


def metric(text: str, name: str, task: str) -> float:
    match = re.search(rf'^{name}\{{queue="default",task="{task}"\}} (\S+)$', text, re.MULTILINE)
    assert match, f"no {name} for {task} in:\n{text}"
    return float(match[1])


def test_the_demo_runs_end_to_end_as_compose_runs_it(
    compose: Any, empty_dsn: str, image_workdir: Path, services: Services
) -> None:
    python = [sys.executable, "-m"]
    migrate_command = compose["services"]["migrate"]["command"]
    migrate = services.start(
        "migrate", [*python, "pgq", *migrate_command], image_workdir, empty_dsn
    )
    assert migrate.wait(timeout=60) == 0, services.log("migrate")

    # The worker's own command, on the loopback and a free port instead of 0.0.0.0:9400.
    port = free_port()
    worker_command = [with_defaults(arg) for arg in compose["services"]["worker"]["command"]]
    worker_command = replace_option(worker_command, "--metrics-host", "127.0.0.1")
    worker_command = replace_option(worker_command, "--metrics-port", str(port))
    worker = services.start("worker", [*python, "pgq", *worker_command], image_workdir, empty_dsn)

    # The shop's own command, ten orders a second instead of one.
    shop_service = compose["services"]["shop"]
    assert shop_service["entrypoint"][:2] == ["python", "-m"]
    shop_command = replace_option(shop_service["command"], "--interval-seconds", "0.1")
    shop = services.start("shop", [*python, *shop_service["entrypoint"][2:], *shop_command],
                          image_workdir, empty_dsn)  # fmt: skip

    wait_until(
        first_orders_finished(empty_dsn, 10, services), 60,
        lambda: f"the first 10 orders' jobs did not finish\n{services.log('worker')}",
    )  # fmt: skip
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()

    # Stopped as `docker compose stop` does: SIGTERM, and both leave cleanly.
    for name, process in [("shop", shop), ("worker", worker)]:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, services.log(name)
    assert re.search(r"stopped after \d+ orders", services.log("shop"))

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        jobs = {
            (order_id, task): (status, attempts, error)
            for order_id, task, status, attempts, error in conn.execute(
                "SELECT (args->>'order_id')::int, task, status::text, attempts, last_error"
                " FROM pgq.jobs WHERE (args->>'order_id')::int <= 10"
            )
        }
        orders = conn.execute(
            "SELECT id, charged_at IS NOT NULL, confirmation_sent_at IS NOT NULL"
            " FROM shop_orders WHERE id <= 10 ORDER BY id"
        ).fetchall()

    # Every 4th charge timed out once and succeeded on its retry.
    charges = {order: jobs[order, "charge_card"][:2] for order in range(1, 11)}
    assert charges == {order: ("succeeded", 2 if order in (4, 8) else 1) for order in range(1, 11)}
    assert "payment gateway timed out" in jobs[4, "charge_card"][2]
    # Every 10th confirmation has no address: dead on its first attempt, not retried.
    confirmations = {order: jobs[order, "send_confirmation"][:2] for order in range(1, 11)}
    assert confirmations == {order: ("dead", 1) if order == 10 else ("succeeded", 1)
                             for order in range(1, 11)}  # fmt: skip
    assert "not an email address" in jobs[10, "send_confirmation"][2]
    assert orders == [(order, True, order != 10) for order in range(1, 11)]

    # What Prometheus scrapes from the worker.
    assert metric(metrics, "pgq_jobs_succeeded_total", "charge_card") >= 10
    assert metric(metrics, "pgq_jobs_retried_total", "charge_card") >= 2
    assert metric(metrics, "pgq_jobs_dead_total", "send_confirmation") >= 1


def test_the_shop_refuses_to_start_without_a_database(image_workdir: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PGQ_DSN", "DATABASE_URL")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "shop.orders", "--interval-seconds=0.1"],
        cwd=image_workdir, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "error: PGQ_DSN is not set" in result.stderr


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf"])
def test_the_shop_refuses_an_interval_it_cannot_keep(image_workdir: Path, interval: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shop.orders", f"--interval-seconds={interval}"],
        cwd=image_workdir, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--interval-seconds must be > 0 and at most 3600" in result.stderr
