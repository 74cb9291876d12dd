"""Build the Cython kernel.

Every ``*.pyx`` under ``twinbench/`` becomes an extension module of the same dotted name.

Environment switches
--------------------
TWINBENCH_NATIVE=1
    Compile for the build machine's own CPU (``-march=native``). Faster, not portable: use it only
    when the package is built on the machine that runs it.
TWINBENCH_NO_OPENMP=1
    Build without OpenMP (ensembles then run on one thread).
TWINBENCH_BUILD_ONLY=name[,name]
    Developer aid: build only the extensions whose dotted name contains one of these substrings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _extensions() -> list[Extension]:
    native = _flag("TWINBENCH_NATIVE")
    openmp = not _flag("TWINBENCH_NO_OPENMP") and sys.platform != "darwin"
    # -O3 turns on the auto-vectoriser. No -ffast-math: it would let the compiler assume there are
    # no NaNs, and the kernel's job includes reporting where NaN appears.
    compile_args = ["-O3", "-fno-math-errno", "-Wno-unreachable-code"]
    link_args: list[str] = []
    if native:
        compile_args.append("-march=native")
    if openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    only = [s for s in os.environ.get("TWINBENCH_BUILD_ONLY", "").split(",") if s]
    exts = []
    for pyx in sorted(HERE.glob("twinbench/**/*.pyx")):
        rel = pyx.relative_to(HERE).with_suffix("")
        name = ".".join(rel.parts)
        if only and not any(s in name for s in only):
            continue
        exts.append(
            Extension(
                name,
                [str(pyx.relative_to(HERE))],
                include_dirs=[numpy.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=compile_args,
                extra_link_args=link_args,
            )
        )
    return exts


setup(
    ext_modules=cythonize(
        _extensions(),
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
            "embedsignature": True,
        },
        include_path=[str(HERE)],
    ),
)
