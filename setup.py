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

The JupyterLab extension (extensions/jupyterlab-twinbench, built by `make setup` with jlpm into
``twinbench/labextension``) ships as package data and where JupyterLab looks for it,
``share/jupyter/labextensions/jupyterlab-twinbench``, when it was built before the package is.
The Voila template (``share/jupyter/voila/templates/twinbench``, sources, nothing to build) is
installed the same way, where Voila looks for templates, so that ``voila --template=twinbench``
finds it. An editable install leaves data files out: ``make setup`` copies the template into the
venv, and again when it changes.

Run-time dispatch: each ``_x_avx2.pyx`` (one line: ``include "_x.pyx"``) is the same module built
for x86-64-v3 (AVX2) with floating-point contraction off, so it rounds exactly like the baseline;
``twinbench.kernel._dispatch`` picks it when the CPU has AVX2. The variants are skipped on
compilers or machines that cannot build them, and in native builds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Model functions read dozens of parameter rows and write a few output rows through pointers that
# never alias; gcc proves that with run-time checks, but by default gives up beyond 10 of them and
# leaves the scenario loop scalar. Allowing more checks lets it vectorise. gcc-only, so probed.
OPTIONAL_FLAGS = [["--param", "vect-max-version-for-alias-checks=400"]]
VARIANT_SUFFIX = "_avx2"
VARIANT_FLAGS = ["-march=x86-64-v3", "-mtune=generic", "-ffp-contract=off"]


class BuildExt(build_ext):
    """build_ext that adds the optional compiler flags the compiler accepts."""

    def _accepts(self, flags: list[str]) -> bool:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.c"
            src.write_text("int main(void) { return 0; }\n")
            try:
                self.compiler.compile([str(src)], output_dir=tmp, extra_postargs=["-Werror", *flags])
            except Exception:  # noqa: BLE001 - any failure means "not supported"
                return False
        return True

    def build_extensions(self) -> None:
        accepted = [f for flags in OPTIONAL_FLAGS if self._accepts(flags) for f in flags]
        variants = not _flag("TWINBENCH_NATIVE") and self._accepts(VARIANT_FLAGS)
        if not variants:
            skipped = [e for e in self.extensions if e.name.endswith(VARIANT_SUFFIX)]
            self.extensions = [e for e in self.extensions if e not in skipped]
            # A variant left over from an earlier build into the same place (in place, for an
            # editable install) would be dispatched to instead of the module built now.
            for ext in skipped:
                stale = Path(self.get_ext_fullpath(ext.name))
                if stale.exists():
                    stale.unlink()
        for ext in self.extensions:
            extra = VARIANT_FLAGS if ext.name.endswith(VARIANT_SUFFIX) else []
            ext.extra_compile_args = [*ext.extra_compile_args, *accepted, *extra]
        super().build_extensions()

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


def _data_files() -> list[tuple[str, list[str]]]:
    """The files a wheel installs under the environment's ``share/jupyter``: the built
    JupyterLab extension (when it was built) and the Voila template."""
    trees = [
        (HERE / "twinbench" / "labextension",
         Path("share/jupyter/labextensions/jupyterlab-twinbench")),
        (HERE / "share" / "jupyter" / "voila" / "templates" / "twinbench",
         Path("share/jupyter/voila/templates/twinbench")),
    ]
    files: dict[str, list[str]] = {}
    for built, target in trees:
        for path in sorted(built.rglob("*")):
            if path.is_file():
                where = str(target / path.parent.relative_to(built))
                files.setdefault(where, []).append(str(path.relative_to(HERE)))
    return sorted(files.items())


setup(
    cmdclass={"build_ext": BuildExt},
    data_files=_data_files(),
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
