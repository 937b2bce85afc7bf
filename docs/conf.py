"""Sphinx configuration of tidelog's API reference (built from the docstrings by autodoc).

Build: pip install '.[docs]' && sphinx-build -W -b html docs docs/_build/html
(tests/test_docs.py runs that with warnings as errors against the installed tidelog)."""
import tidelog

project = "tidelog"
author = "tidelog authors"
copyright = "2026, tidelog authors"
release = version = tidelog.__version__

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build", "*.md"]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
# the core is compiled: its signatures come from Cython's embedsignature (ext/_core.pyx)
autodoc_docstring_signature = True

html_theme = "alabaster"

# Docstrings of tidelog.replay are not written as reStructuredText yet (its split is under way):
# show them verbatim, as help() does, rather than let docutils misread their indentation.
VERBATIM_MODULES = ("tidelog.replay",)


def _verbatim(app, what, name, obj, options, lines):
    module = getattr(obj, "__module__", None) or ""
    if lines and (module.startswith(VERBATIM_MODULES) or name.startswith(VERBATIM_MODULES)):
        lines[:] = ["::", ""] + ["    " + line for line in lines] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _verbatim)
