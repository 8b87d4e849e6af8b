"""Builds the Cython NMS extension ``nms._soft_nms`` (nms/soft_nms.pyx) in place.

Run ``bash scripts/make.sh`` (= ``python setup.py build_ext --inplace``). This file only
builds the extension; the project itself is used from the repository root.
"""
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "win32":
    compile_args = ["/O2"]  # MSVC does not contract a*b+c by default
else:
    # -O3: lets GCC/Clang vectorize the branch-free IoU sweep of the optimized kernel.
    # -ffp-contract=off: no fused multiply-add (GCC's default on e.g. aarch64), so the
    # optimized and the classic kernel round every float32 operation the same way.
    # -fno-trapping-math: we never read floating-point exception flags; it allows GCC to
    # turn the selects of the weight loops into branch-free code (values are unchanged).
    compile_args = ["-O3", "-ffp-contract=off", "-fno-trapping-math"]

extensions = [
    Extension(
        "nms._soft_nms",
        sources=["nms/soft_nms.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
    )
]

setup(
    name="m2det-nms",
    # explicit empty lists: the repository has several top-level packages and setuptools'
    # automatic discovery would refuse the flat layout
    packages=[],
    py_modules=[],
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
    zip_safe=False,
)
