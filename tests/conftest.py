"""Shared fixtures: a fresh log directory, and helpers to run real writer processes."""
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import tidelog
from tidelog.cli import cli


@pytest.fixture
def log_path(tmp_path):
    return str(tmp_path / "log")


@pytest.fixture
def run():
    """Invoke the `tidelog` command line in this process: run("info", path) -> click Result
    (stdout and stderr kept apart)."""
    try:
        runner = CliRunner(mix_stderr=False)     # click 8.1
    except TypeError:
        runner = CliRunner()                     # click >= 8.2 keeps stderr apart by itself

    def invoke(*args, input=None):
        return runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    return invoke


@pytest.fixture
def log(log_path):
    lg = tidelog.open(log_path, durability="none", segment_bytes=1 << 16)
    yield lg
    lg.close()


def run_python(code, *args, timeout=60, check=True, **kw):
    """Run `code` in a fresh interpreter (the installed tidelog), return CompletedProcess."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def spawn_python(code, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def read_pipe_lines(rfd):
    """Every complete line a (killed) child wrote to the pipe, which this closes: the kill may
    cut the last one."""
    chunks = []
    while True:
        b = os.read(rfd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(rfd)
    return b"".join(chunks).split(b"\n")[:-1]


def snapshot_dir(path):
    """{name: bytes} of every file in a directory (to prove nothing was modified)."""
    out = {}
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                out[name] = f.read()
    return out
