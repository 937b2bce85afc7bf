"""Only the extension module; everything else is in pyproject.toml."""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "win32":
    sys.exit("tidelog needs a POSIX system (Linux or macOS): mmap, flock, fdatasync; "
             "Windows is not supported")

debug = os.environ.get("TIDELOG_DEBUG") == "1"   # -O0 -g with ASan/UBSan for the core
cflags = ["-O0", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"] if debug else ["-O2"]
ldflags = ["-fsanitize=address,undefined"] if debug else []

ext = Extension(
    "tidelog._core",
    ["ext/_core.pyx", "ext/crc32c.c"],
    include_dirs=["ext"],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(ext_modules=cythonize([ext], include_path=["ext"],
                            compiler_directives={"language_level": 3},
                            annotate=os.environ.get("TIDELOG_ANNOTATE") == "1"))
