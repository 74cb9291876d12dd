"""Pick the best compiled variant of a kernel module for this CPU at run time.

The portable build compiles the hot modules twice: for the x86-64 baseline, and for x86-64-v3
(AVX2) with floating-point contraction off, so both variants round exactly alike. At import,
the AVX2 variant is used when the CPU has AVX2 (as NumPy dispatches its own loops); otherwise,
or with ``TWINBENCH_DISPATCH=baseline``, the baseline. A native build (``TWINBENCH_NATIVE=1``)
builds only one variant, already tuned to its machine.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from types import ModuleType

__all__ = ["compiled_module", "cpu_has_avx2", "VARIANT_SUFFIX"]

#: Module-name suffix of the AVX2 variant of a compiled module.
VARIANT_SUFFIX = "_avx2"


#: /proc/cpuinfo flags that make up x86-64-v3 (lzcnt is listed as "abm").
_V3_FLAGS = {"avx", "avx2", "bmi1", "bmi2", "fma", "f16c", "movbe", "abm"}


@lru_cache(maxsize=1)
def cpu_has_avx2() -> bool:
    """Whether this CPU runs the variant's code: the whole x86-64-v3 level (AVX2, FMA, BMI1/2,
    F16C, LZCNT, MOVBE), not AVX2 alone, since the compiler uses all of them."""
    try:
        from twinbench.kernel._model import cpu_x86_64_v3

        known = cpu_x86_64_v3()
    except ImportError:
        known = -1
    if known >= 0:
        return bool(known)
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return _V3_FLAGS <= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return False


def compiled_module(name: str) -> ModuleType:
    """Import the compiled module ``name`` in the best variant this machine can run.

    Parameters
    ----------
    name : str
        Dotted name of the baseline module, e.g. ``"twinbench.models._pump"``.
    """
    choice = os.environ.get("TWINBENCH_DISPATCH", "auto").strip().lower()
    if choice not in ("auto", "baseline", "avx2"):
        raise ValueError(f"TWINBENCH_DISPATCH: expected auto, baseline or avx2, got {choice!r}")
    if choice != "baseline" and (choice == "avx2" or cpu_has_avx2()):
        try:
            return importlib.import_module(name + VARIANT_SUFFIX)
        except ImportError:
            if choice == "avx2":
                raise
    return importlib.import_module(name)
