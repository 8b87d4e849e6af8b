"""Compiled parts of the package; the metadata is in pyproject.toml.

    nms._soft_nms                  Cython soft-NMS (nms/soft_nms.pyx), a Python extension
    m2det/kernels/_winograd_f23.so the Winograd F(2x2, 3x3) and F(4x4, 3x3) transforms (m2det/kernels/
                                   winograd_f23.c, winograd_f43.c), a plain C shared library that
                                   MindSpore loads as "aot" custom operators
    m2det/kernels/_direct_conv3x3.so  direct 3x3 convolutions and their gradients for narrow layers
                                   (m2det/kernels/direct_conv3x3.c), the same kind of library
    m2det/kernels/_group_norm_relu.so  GroupNorm + ReLU and its gradient for training
                                   (m2det/kernels/group_norm_relu.c), the same kind of library
    m2det/kernels/_batch_norm_relu.so  BatchNorm + ReLU and its gradient for training
                                   (m2det/kernels/batch_norm_relu.c), the same kind of library
    m2det/kernels/_max_pool.so     max-pooling and its gradient for training
                                   (m2det/kernels/max_pool.c), the same kind of library
    m2det/kernels/_squared_sum.so  the squared sum of many tensors, for the global norm of the
                                   gradients (m2det/kernels/squared_sum.c), the same kind of library

`pip install .` puts them into the installed packages, `pip install -e .` and
`bash scripts/make.sh` (= `python setup.py build_ext --inplace`) next to their sources,
where nms/__init__.py and m2det/winograd.py look for them.
"""
import os
import shlex
import subprocess
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

if sys.platform == "win32":
    compile_args = ["/O2"]  # MSVC does not contract a*b+c by default
else:
    # -O3: lets GCC/Clang vectorize the branch-free IoU sweep of the optimized kernel.
    # -ffp-contract=off: no fused multiply-add (GCC's default on e.g. aarch64), so the
    # optimized and the classic kernel round every float32 operation the same way.
    # -fno-trapping-math: we never read floating-point exception flags; it allows GCC to
    # turn the selects of the weight loops into branch-free code (values are unchanged).
    compile_args = ["-O3", "-ffp-contract=off", "-fno-trapping-math"]

# one library (its path is recorded in exported MINDIRs), both tile sizes
WINOGRAD_SOURCES = [os.path.join("m2det", "kernels", name) for name in ("winograd_f23.c", "winograd_f43.c")]
WINOGRAD_LIBRARY = os.path.join("m2det", "kernels", "_winograd_f23.so")
# the same command as scripts/make.sh; the library is not a Python module, so it is compiled
# directly rather than as an Extension (which would add Python's flags and an ABI-tagged name)
WINOGRAD_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c99", "-Wall", "-Wextra", "-Werror"]

# the direct convolutions: built the same way, with fused multiply-adds allowed (-std=c99 turns them off)
DIRECT_CONV_SOURCE = os.path.join("m2det", "kernels", "direct_conv3x3.c")
DIRECT_CONV_LIBRARY = os.path.join("m2det", "kernels", "_direct_conv3x3.so")
DIRECT_CONV_FLAGS = ["-O3", "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC", "-std=c99", "-Wall", "-Wextra", "-Werror"]

# GroupNorm + ReLU: built as the direct convolutions; sqrt as the CPU instruction (its argument is > 0), no libm
GROUP_NORM_SOURCE = os.path.join("m2det", "kernels", "group_norm_relu.c")
GROUP_NORM_LIBRARY = os.path.join("m2det", "kernels", "_group_norm_relu.so")
GROUP_NORM_FLAGS = DIRECT_CONV_FLAGS + ["-fno-math-errno"]

# BatchNorm + ReLU: built as the Winograd kernels (no fused multiply-adds: the gradient recomputes
# the ReLU's mask, which must round as the forward's), sqrt as the CPU instruction
BATCH_NORM_SOURCE = os.path.join("m2det", "kernels", "batch_norm_relu.c")
BATCH_NORM_LIBRARY = os.path.join("m2det", "kernels", "_batch_norm_relu.so")

# max-pooling and the squared sum of the gradients: built as the Winograd kernels
MAX_POOL_SOURCE = os.path.join("m2det", "kernels", "max_pool.c")
MAX_POOL_LIBRARY = os.path.join("m2det", "kernels", "_max_pool.so")
SQUARED_SUM_SOURCE = os.path.join("m2det", "kernels", "squared_sum.c")
SQUARED_SUM_LIBRARY = os.path.join("m2det", "kernels", "_squared_sum.so")

# (what, sources, flags, library)
KERNELS = [
    ("the Winograd kernels", WINOGRAD_SOURCES, WINOGRAD_FLAGS, WINOGRAD_LIBRARY),
    ("the direct convolution kernels", [DIRECT_CONV_SOURCE], DIRECT_CONV_FLAGS, DIRECT_CONV_LIBRARY),
    ("the GroupNorm + ReLU kernels", [GROUP_NORM_SOURCE], GROUP_NORM_FLAGS, GROUP_NORM_LIBRARY),
    ("the BatchNorm + ReLU kernels", [BATCH_NORM_SOURCE], WINOGRAD_FLAGS + ["-fno-math-errno"],
     BATCH_NORM_LIBRARY),
    ("the max-pooling kernels", [MAX_POOL_SOURCE], WINOGRAD_FLAGS, MAX_POOL_LIBRARY),
    ("the squared-sum kernel", [SQUARED_SUM_SOURCE], WINOGRAD_FLAGS, SQUARED_SUM_LIBRARY),
]


class BuildExtensionsAndKernels(build_ext):
    """build_ext, then the kernel libraries into the same tree as the extension modules."""

    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        in_source = self.inplace or getattr(self, "editable_mode", False)
        roots = [here] if in_source else []
        if not self.inplace:
            roots.append(self.build_lib)
        for root in roots:
            for what, sources, flags, library in KERNELS:
                self._compile(what, [os.path.join(here, source) for source in sources], flags,
                              os.path.join(root, library))

    @staticmethod
    def _compile(what: str, sources: list, flags: list, target: str) -> None:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".tmp"
        command = [os.environ.get("CC", "gcc"), *flags, "-o", tmp, *sources]
        print(f"building {what}:", shlex.join(command))
        subprocess.run(command, check=True)
        os.replace(tmp, target)

    def get_outputs(self):
        outputs = super().get_outputs()
        if not self.inplace:
            outputs += [os.path.join(self.build_lib, library) for _, _, _, library in KERNELS]
        return outputs


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
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExtensionsAndKernels},
)
