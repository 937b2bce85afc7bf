"""What a wheel carries (issue 17, item 4): metadata (SPDX license, LICENSE file, classifiers),
a stripped core, and the cibuildwheel matrix that builds every Python the classifiers promise.

The metadata checks read the installed distribution, so they hold for the wheel .ci/run tests as
well as for an editable install; the matrix check reads pyproject.toml beside tests/."""
import os
import re
import sys
from importlib import metadata
from pathlib import Path

import tidelog
from tidelog import _core

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14"]

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # the test extra installs tomli below 3.11
    import tomli as tomllib


def test_metadata_has_an_spdx_license_and_ships_the_license_file():
    meta = metadata.metadata("tidelog")
    assert meta["License-Expression"] == "MIT"
    assert meta.get("License") is None          # the deprecated free-text field is gone
    assert "LICENSE" in meta.get_all("License-File")
    files = [f for f in metadata.files("tidelog") if f.name == "LICENSE"]
    assert files, "the LICENSE file is not in the distribution"
    text = files[0].read_text()
    assert "MIT License" in text and "tidelog authors" in text


def test_classifiers_name_every_python_built_and_typing():
    classifiers = set(metadata.metadata("tidelog").get_all("Classifier"))
    for v in PYTHONS:
        assert f"Programming Language :: Python :: {v}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    urls = metadata.metadata("tidelog").get_all("Project-URL")
    assert {u.split(",")[0] for u in urls} >= {"Homepage", "Documentation", "Source", "Issues"}


def test_cibuildwheel_builds_every_python_and_the_free_threaded_one():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = conf["tool"]["cibuildwheel"]["build"].split()
    for v in PYTHONS:
        assert f"cp{v.replace('.', '')}-*" in build
    assert "cp314t-*" in build
    # the SPDX string needs setuptools >= 77 to build
    floor = [r for r in conf["build-system"]["requires"] if r.startswith("setuptools")]
    m = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", floor[0])
    assert m and int(m.group(1)) >= 77
    assert conf["project"]["license"] == "MIT"


def test_the_core_carries_no_debug_info():
    data = Path(_core.__file__).read_bytes()
    if b"__asan_init" in data:          # TIDELOG_DEBUG=1: a sanitizer build keeps -g on purpose
        return
    # ELF section names (.debug_info, .symtab) or Mach-O's (__debug_info) of a build with -g
    assert b".debug_info" not in data and b"__debug_info" not in data
    if data[:4] == b"\x7fELF":
        assert b".symtab" not in data, "the symbol table was not stripped"
