"""The API reference (issue 17, item 2): docs/ builds with Sphinx autodoc from the installed
package's docstrings, with warnings as errors, and the docstrings carry the contract themselves
(no pointer to a file outside the project). Sphinx comes with the test extra: never skipped."""
import inspect
import subprocess
import sys
from pathlib import Path

import tidelog

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_api_reference_builds_without_warnings(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "text",
                          "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "text")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    api = (tmp_path / "text" / "api.txt").read_text()
    # the reference is made from the docstrings: what they say is in it
    for needle in ["tidelog.open(path", "Raises \"LogLockedError\"", "append_batch(values",
                   "class tidelog.Record", "values_array(", "class tidelog.Cursor",
                   "commit(", "class tidelog.Replayer", "exception tidelog.CorruptLogError"]:
        assert needle in api, needle


def _public_docstrings():
    seen = set()
    for name in tidelog.__all__:
        obj = getattr(tidelog, name)
        if not (inspect.isclass(obj) or callable(obj)):
            continue
        yield name, obj
        if inspect.isclass(obj):
            for attr, member in inspect.getmembers(obj):
                if attr.startswith("_") or id(member) in seen:
                    continue
                seen.add(id(member))
                yield f"{name}.{attr}", member


def test_every_public_name_has_a_docstring_and_none_points_outside_the_project():
    missing, pointing = [], []
    for name, obj in _public_docstrings():
        doc = inspect.getdoc(obj)
        if not doc:
            if not isinstance(obj, (int, str, type(None))):
                missing.append(name)
            continue
        if "API.md" in doc:
            pointing.append(name)
    assert not pointing, f"docstrings pointing to API.md: {pointing}"
    assert "open" not in missing and "Log" not in missing
