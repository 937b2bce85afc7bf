"""Types (issue 17, item 3): the package ships a stub for its compiled core and annotated
modules, so `mypy --strict` accepts a user script over the public API and rejects misuse.

tests/typing_user_script.py is that script: it is run first (the types describe code that
works), then checked with mypy --strict as a user's project would check it, against the tidelog
that is installed. The package's own modules are also checked themselves under --strict (all of
them but NOT_YET_TYPED)."""
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import tidelog

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "typing_user_script.py"
# Every module of the installed package is checked under --strict (new ones too: the list is
# walked, not written out), except these (none left).
NOT_YET_TYPED: set[str] = set()


def typed_modules():
    """The package's modules (tidelog._core: its stub), less NOT_YET_TYPED."""
    names = ["tidelog"] + [m.name for m in pkgutil.walk_packages(tidelog.__path__, "tidelog.")]
    return [m for m in names if m not in NOT_YET_TYPED]


def mypy(tmp_path, *args):
    env = dict(os.environ, MYPYPATH="")
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
                           "--cache-dir", str(tmp_path / "mypy-cache"), *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)


def test_the_package_ships_its_types():
    pkg = Path(tidelog.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_core.pyi").exists()


def test_the_user_script_runs(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_mypy_strict_accepts_the_user_script(tmp_path):
    out = mypy(tmp_path, str(SCRIPT))
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_rejects_a_misspelt_method_and_a_wrong_keyword(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""\
        import tidelog

        log = tidelog.open("events.log")
        log.apend(b"x")
        log.append(b"x", keyy=1)
        log.append("a str is not bytes")
        log.cursor(nam="indexer")
        rec = log.read(0)
        rec.vlaue
        tidelog.open("events.log", durability="sometimes")
        """))
    out = mypy(tmp_path, str(bad))
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for line, code in [(4, "attr-defined"), (5, "call-arg"), (6, "arg-type"), (7, "call-arg"),
                       (9, "attr-defined"), (10, "arg-type")]:
        assert any(f"bad.py:{line}: error:" in ln and f"[{code}]" in ln for ln in lines), \
            (line, code, out.stdout)


def test_the_module_list_covers_the_package():
    mods = typed_modules()
    for m in ["tidelog", "tidelog._core", "tidelog.cli", "tidelog.demo", "tidelog.tools",
              "tidelog.__main__", "tidelog.replay", "tidelog.replay.replayer", "tidelog.log",
              "tidelog.eventsourcing"]:
        assert m in mods
    assert not set(mods) & NOT_YET_TYPED


def test_the_package_passes_mypy_strict_itself(tmp_path):
    args = ["--follow-imports=silent"]
    for m in typed_modules():
        args += ["-m", m]
    out = mypy(tmp_path, *args)
    assert out.returncode == 0, out.stdout + out.stderr
