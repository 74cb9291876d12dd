# The AVX2 (x86-64-v3) variant of _wind.pyx: same source, built with other flags by setup.py
# and chosen at run time by twinbench.kernel._dispatch when the CPU has AVX2.
include "_wind.pyx"
