"""The README and docs say what the code does: every fenced shell command is checked.

Each command of every ```bash block in README.md, docs/*.md and bench/README.md
is checked against the code: make targets exist; ``ros2 launch`` arguments are
declared by the launch file; ``ros2 lifecycle`` transitions and ``ros2 param``
values are valid; our console scripts and modules exist and every option a
command uses is one that their ``--help`` lists. The cheap ones run as
written: ``--help`` of every tool, the parameter table generator, and
``sirdiff-restore`` itself (started, checked active, stopped). Commands of
the ROS tool chain that this venv lacks (source, colcon, rosdep, ...) are
named in ``EXTERNAL``; anything else fails the test, so a new command in the
docs gets a check.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import pytest

from sirdiff_ros.ros import params as P

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "bench" / "README.md"]
# Tools of a ROS / Python installation that the docs use and this venv does not have or need.
EXTERNAL = {"source", "mkdir", "cd", "git", "rosdep", "colcon", "pip"}
TRANSITIONS = {"configure", "activate", "deactivate", "cleanup", "shutdown"}

pytestmark = pytest.mark.timeout(600)


def _commands() -> list[tuple[str, str]]:
    """(file, command) for every command line of every bash block."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            text = re.sub(r"\\\n\s*", " ", block)  # continuation lines
            for line in text.splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line).strip()
                for part in re.split(r"\s*(?:&&|;)\s*", line):
                    part = part.rstrip("&").strip()
                    if part:
                        out.append((doc.relative_to(REPO_ROOT).as_posix(), part))
    return out


COMMANDS = _commands()


def test_readme_is_short_and_links_resolve() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert readme.count("\n") <= 350
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_docs_speak_of_the_product_only() -> None:
    for doc in DOCS:
        text = doc.read_text()
        for pattern in (r"\bissue \d", r"\bstage[- ]\d", r"\bE\d\b"):
            assert not re.search(pattern, text, re.I), (doc.name, pattern)


@cache
def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", (REPO_ROOT / "Makefile").read_text(), re.M))


@cache
def _launch_arguments() -> set[str]:
    tree = ast.parse((REPO_ROOT / "launch" / "restore.launch.py").read_text())
    return {n.args[0].value for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"}


@cache
def _help(argv: tuple[str, ...]) -> str:
    res = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert res.returncode == 0, f"{' '.join(argv)} --help failed: {res.stderr[-2000:]}"
    return res.stdout


def _console_script(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if not exe.is_file():
        pytest.skip(f"{name} is not installed in this interpreter's bin/ (make venv installs it)")
    return [str(exe)]


def _check_options(tool: list[str], args: list[str], where: str) -> None:
    """Every --option in ``args`` is listed by the tool's (or its subcommand's) --help."""
    options = [a.split("=")[0] for a in args if a.startswith("--")]
    help_text = _help(tuple(tool))
    if args and not args[0].startswith("-") and re.search(rf"\b{re.escape(args[0])}\b", help_text.split("options:")[0]):
        help_text = _help((*tool, args[0]))  # a subcommand
    for opt in options:
        assert re.search(rf"(^|[\s,\[]){re.escape(opt)}\b", help_text, re.M), f"{where}: {opt} is not an option of {' '.join(tool)}"


def _check_ros_args(args: list[str], where: str) -> None:
    i = args.index("--ros-args") + 1 if "--ros-args" in args else len(args)
    for flag, value in zip(args[i:], args[i + 1:]):
        if flag == "--params-file":
            assert (REPO_ROOT / value).is_file() or value.startswith("install/"), f"{where}: no {value}"
        elif flag == "-p":
            name = value.split(":=")[0]
            assert name in P.SPECS or name == "use_sim_time", f"{where}: unknown parameter {name}"


def _run_node(args: list[str], where: str) -> None:
    """Start the restore node as the docs do, wait until it is active, stop it with SIGINT."""
    proc = subprocess.Popen([*_console_script("sirdiff-restore"), *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        lines = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "active: restoring" in line or proc.poll() is not None:
                break
        assert "active: restoring" in "".join(lines), f"{where}: " + "".join(lines)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(20)
        assert rc == 0, f"{where}: exit {rc} after SIGINT\n" + "".join(lines) + (proc.stdout.read() or "")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:50]}" for w, c in COMMANDS])
def test_documented_command(where: str, command: str) -> None:
    argv = shlex.split(command.replace("$ROS_DISTRO", "kilted").replace("<this repository>", "REPO"))
    tool, args = argv[0], argv[1:]
    name = Path(tool).name
    if name in EXTERNAL:
        return
    if name == "make":
        targets = [a for a in args if "=" not in a]
        assert targets and set(targets) <= _makefile_targets(), f"{where}: {command}"
    elif name == "ros2":
        verb = args[0]
        if verb == "launch":
            assert args[1:3] == ["sirdiff_ros", "restore.launch.py"], command
            for a in args[3:]:
                assert a.split(":=")[0] in _launch_arguments(), f"{where}: launch argument {a} is not declared"
        elif verb == "lifecycle":
            assert args[1:3] == ["set", "/sirdiff_restore"] and args[3] in TRANSITIONS, command
        elif verb == "param":
            pname, value = args[3], args[4]
            assert args[1:3] == ["set", "/sirdiff_restore"] and not P.SPECS[pname].read_only, command
            assert P.check_value(pname, P.SPECS[pname].type(value)) is None, command
        elif verb == "run":
            assert args[1:3] == ["sirdiff_ros", "restore_node"] and (REPO_ROOT / "scripts" / "restore_node").is_file()
            _check_ros_args(args, where)
        else:
            pytest.fail(f"{where}: no check for `ros2 {verb}`")
    elif name == "sirdiff-restore":
        _check_ros_args(args, where)
        _run_node(args, where)
    elif name.startswith("sirdiff-"):
        _check_options(_console_script(name), args, where)
    elif name == "accelerate":
        assert args[:2] == ["launch", "-m"], command
        _check_options([sys.executable, "-m", args[2]], args[3:], where)
    elif name.startswith("python") and args and args[0].endswith(".py"):
        assert (REPO_ROOT / args[0]).is_file(), f"{where}: no {args[0]}"
        _check_options([sys.executable, str(REPO_ROOT / args[0])], args[1:], where)
    elif name.startswith("python"):
        assert args[0] == "-m", command
        if args[1] == "sirdiff_ros.ros.params":  # cheap: run it
            res = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
            assert res.returncode == 0 and res.stdout, res.stderr
        else:
            _check_options([sys.executable, "-m", args[1]], args[2:], where)
    elif name == "bash" or tool.startswith(("scripts/", "bench/")):
        script = args[0] if name == "bash" else tool
        assert (REPO_ROOT / script).is_file(), f"{where}: no {script}"
    else:
        pytest.fail(f"{where}: no check for {command!r}; add one to test/test_docs.py")
