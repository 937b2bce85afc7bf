"""What a wheel carries (issue 17, item 4): metadata (SPDX license, LICENSE file, classifiers),
a stripped core, and the cibuildwheel matrix that builds every Python the classifiers promise.

The metadata checks read the installed distribution, so they hold for the wheel .ci/run tests as
well as for an editable install; the matrix check reads pyproject.toml beside tests/."""
import importlib
import os
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

import tidelog

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


@pytest.mark.parametrize("module", ["tidelog._core", "tidelog.bridge._rdkc"])
def test_the_compiled_modules_carry_no_debug_info(module):
    """The core, and the Kafka ingest's C loop (a wheel carries it on every target: it needs
    no librdkafka to build or to import, only confluent-kafka's at run time)."""
    data = Path(importlib.import_module(module).__file__).read_bytes()
    if b"__asan_init" in data:          # TIDELOG_DEBUG=1: a sanitizer build keeps -g on purpose
        return
    # ELF section names (.debug_info, .symtab) or Mach-O's (__debug_info) of a build with -g
    assert b".debug_info" not in data and b"__debug_info" not in data
    if data[:4] == b"\x7fELF":
        assert b".symtab" not in data, "the symbol table was not stripped"


# what a wheel's test run may import besides the standard library and the tests' own modules: the
# core's dependencies (pyproject [project] dependencies) and cibuildwheel's test-requires
CORE_DEPENDENCIES = {"tidelog", "numpy", "lmdb", "click", "rich"}


def _imports(path, everywhere):
    """Top-level module names `path` imports (pytest.importorskip too): every import statement
    when `everywhere`, else only those not inside a function (a helper module's lazy imports run
    only for its callers)."""
    import ast
    tree = ast.parse(path.read_text(), str(path))
    found = set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import) and (everywhere or not in_function):
                found.update(a.name.split(".")[0] for a in child.names)
            elif (isinstance(child, ast.ImportFrom) and child.level == 0 and child.module
                    and (everywhere or not in_function)):
                found.add(child.module.split(".")[0])
            elif (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and child.func.attr == "importorskip" and child.args
                    and isinstance(child.args[0], ast.Constant)):
                found.add(child.args[0].value.split(".")[0])     # (a skip is no test either)
            visit(child, inner)
    visit(tree, False)
    return found


def test_the_wheel_tests_import_only_what_cibuildwheel_installs():
    """cibuildwheel tests each wheel with the files named in test-command and the packages of
    test-requires only (the full test extra lacks wheels for some targets): a file there that
    imports pyarrow, zstandard or the like fails on those targets."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert "test-extras" not in conf, "the full test extra has no wheels on every target"
    allowed = set(sys.stdlib_module_names) | CORE_DEPENDENCIES
    for req in conf["test-requires"]:
        allowed.add(re.match(r"[A-Za-z0-9_.-]+", req).group(0).replace("-", "_"))
    files = re.findall(r"\{project\}/tests/(\S+\.py)", conf["test-command"])
    assert len(files) >= 10 and "test_format.py" in files and "test_packaging.py" in files
    local = {p.stem for p in (ROOT / "tests").glob("*.py")}
    seen, todo = set(), [(f, True) for f in files] + [("conftest.py", False)]
    while todo:
        name, everywhere = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = ROOT / "tests" / name
        assert path.is_file(), f"test-command names {name}, which is not in tests/"
        for mod in _imports(path, everywhere):
            if mod in local:
                todo.append((mod + ".py", False))
            else:
                assert mod in allowed, f"tests/{name} imports {mod}, which test-requires lacks"
