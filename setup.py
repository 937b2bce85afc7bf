"""Only the extension module; everything else is in pyproject.toml."""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "win32":
    sys.exit("tidelog needs a POSIX system (Linux or macOS): mmap, flock, fdatasync; "
             "Windows is not supported")

debug = os.environ.get("TIDELOG_DEBUG") == "1"   # -O0 -g with ASan/UBSan for the core
if debug:
    cflags = ["-O0", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    ldflags = ["-fsanitize=address,undefined"]
else:
    # a release build carries no debug info and no symbol table beyond what the dynamic loader
    # needs (PyInit__core): -g0 overrides the -g in Python's own CFLAGS, and the linker strips
    # (GNU ld / lld: -s; Apple's ld64: -S drops debug symbols, -x local ones). 4.3 MB -> 0.7 MB.
    cflags = ["-O2", "-g0"]
    ldflags = ["-Wl,-S,-x"] if sys.platform == "darwin" else ["-Wl,-s"]

ext = Extension(
    "tidelog._core",
    ["ext/_core.pyx", "ext/crc32c.c"],
    include_dirs=["ext"],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

# the Kafka ingest's reading loop in C (tidelog.bridge._rdkc): librdkafka is no build
# dependency (its functions are looked up at run time in confluent-kafka's own copy, dlopen)
rdkc = Extension(
    "tidelog.bridge._rdkc",
    ["ext/_rdkc.pyx"],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
    libraries=["dl", "pthread"] if sys.platform.startswith("linux") else [],
)

setup(ext_modules=cythonize([ext, rdkc], include_path=["ext"],
                            compiler_directives={"language_level": 3},
                            annotate=os.environ.get("TIDELOG_ANNOTATE") == "1"))
