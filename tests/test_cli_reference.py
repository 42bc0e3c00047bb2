"""docs/reference/cli.md says what `pgq ... --help` says: each command's usage and summary, as
printed at 80 columns, and an options table that names every option the command has, and no
other. When a command changes, this fails until its reference does too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md"
COMMANDS = ["migrate", "roles", "bench", "demo", "work", "stats", "schedules", "jobs", "job",
            "requeue", "cancel", "prune", "tasks", "workers", "web"]  # fmt: skip
ADMIN_COMMANDS = {
    "stats", "schedules", "jobs", "job", "requeue", "cancel", "prune", "tasks", "workers",
}  # fmt: skip
ADMIN_COMMON = {"--dsn", "--schema"}
HELP_BLOCK = re.compile(r"^```\n(?P<body>pgq .*?)^```\n", re.MULTILINE | re.DOTALL)
SECTION = re.compile(r"^#+ `pgq (?P<command>\w[\w-]*)`\n(?P<body>.*?)(?=^#+ |\Z)", re.M | re.S)
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")


def help_text(*argv: str) -> str:
    done = subprocess.run(
        [Path(sys.executable).parent / "pgq", *argv, "--help"], capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "80", "TERM": "dumb"}, check=True,
    )  # fmt: skip
    return done.stdout.removeprefix("Usage: ")


def documented_help() -> dict[str, str]:
    """The command (or "" for `pgq` itself) -> the help block the reference shows for it."""
    blocks = {}
    for match in HELP_BLOCK.finditer(REFERENCE.read_text()):
        words = match["body"].split()
        blocks["" if words[1].startswith("[") else words[1]] = match["body"]
    return blocks


def documented_options(command: str) -> set[str]:
    for match in SECTION.finditer(REFERENCE.read_text()):
        if match["command"] == command:
            rows = [line for line in match["body"].splitlines() if line.startswith("| `")]
            return {option for row in rows for option in OPTION.findall(row.split("|")[1])}
    raise AssertionError(f"docs/reference/cli.md has no section for `pgq {command}`")


def test_the_reference_shows_the_top_level_help_as_printed() -> None:
    assert documented_help()[""] == help_text()


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_usage_and_summary_are_as_printed(command: str) -> None:
    shown = documented_help().get(command)
    assert shown is not None, f"docs/reference/cli.md shows no help block for `pgq {command}`"
    printed = help_text(command).split("\nOptions:")[0].split("\nArguments:")[0]
    assert shown.rstrip("\n") == printed.rstrip("\n")


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_options_table_names_every_option_and_no_other(command: str) -> None:
    printed = help_text(command).split("\nOptions:")[1]
    options = {option for option in OPTION.findall(printed) if option != "--help"}
    if command in ADMIN_COMMANDS:
        # Said once, in the "Admin commands" section, for all of them.
        assert ADMIN_COMMON <= options
        options -= ADMIN_COMMON

    assert documented_options(command) == options


def test_the_admin_commands_common_options_are_said_once() -> None:
    admin = REFERENCE.read_text().split("## Admin commands", 1)[1].split("\n### ", 1)[0]
    assert all(f"`{option}`" in admin for option in ADMIN_COMMON)
