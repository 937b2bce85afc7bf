"""Docs that run (issue 17, item 6): every ```python block of README.md runs as written, each
in a fresh directory in its own interpreter, against the installed tidelog; so does every
command of bench/README.md's quick forms (tests/test_readme.py::test_bench_readme_commands)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path):
    text = path.read_text()
    blocks = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        blocks.append(pytest.param(m.group(1), id=f"{path.name}:{line}"))
    return blocks


README_BLOCKS = python_blocks(ROOT / "README.md")


def test_the_readme_has_python_blocks():
    assert len(README_BLOCKS) >= 4


@pytest.mark.parametrize("code", README_BLOCKS)
def test_readme_python_block_runs_as_written(code, tmp_path):
    if "eventsourcing" in code:
        # the eventsourcing extra needs Python 3.11 (the test extra installs it there)
        pytest.importorskip("eventsourcing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr


BENCH = ROOT / "bench"
COMMAND = re.compile(r"\b(python|pytest) (bench/[\w./]*)([^\n`|#]*)")


def bench_commands():
    """(tool, script, options) of every command bench/README.md shows, in code or inline."""
    text = (BENCH / "README.md").read_text()
    found = {}
    for m in COMMAND.finditer(text):
        options = [t.strip("[]").split("=")[0] for t in m.group(3).split()
                   if t.strip("[]").startswith("--")]
        found.setdefault((m.group(1), m.group(2)), set()).update(options)
    return found


def test_bench_readme_names_no_pythonpath():
    text = (BENCH / "README.md").read_text()
    assert "PYTHONPATH" not in text     # the installed tidelog is the one measured
    assert len(bench_commands()) >= 8


@pytest.mark.parametrize("tool,script", sorted(bench_commands()))
def test_bench_readme_command_works_on_the_installed_tidelog(tool, script, tmp_path):
    """The script starts (its imports work with the installed tidelog, not only with src/ on
    the path) and takes every option the README gives it."""
    options = bench_commands()[tool, script]
    if script == "bench/eventsourcing.py":
        pytest.importorskip("eventsourcing")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if tool == "python":
        cmd = [sys.executable, str(ROOT / script), "--help"]
    else:
        pytest.importorskip("pytest_benchmark")
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--help"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    for opt in options:
        assert opt in out.stdout, (script, opt)


def test_bench_pytest_groups_run_once_on_the_installed_tidelog(tmp_path):
    """`pytest bench/ --benchmark-disable` (bench/README.md: each body once, a smoke test)."""
    pytest.importorskip("pytest_benchmark")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--benchmark-disable", str(BENCH)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
