"""Build of smcheck's optional compiled kernel (the rest of the metadata is in pyproject.toml).

``smcheck._accel`` speeds up eval's gradient-error sums and the roundings of float32 values to
16/8-bit types and bfloat16 (see smcheck/accel.py); it is optional: where no C compiler
or Python headers are found the build goes on without it and smcheck uses its numpy path,
which gives the same numbers bit for bit (tested). The flags keep every operation an IEEE
double operation in source order: no contraction into fused multiply-adds, no fast-math.
"""

import sys

from setuptools import Extension, setup

_FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-fast-math"]

setup(
    ext_modules=[
        Extension("smcheck._accel", ["smcheck/_accel.c"], extra_compile_args=_FLAGS, optional=True)
    ]
)
