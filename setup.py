"""Builds lrfused._C with torch's extension tools.

LRFUSED_CUDA=auto (default) builds the CUDA kernels when torch was built with CUDA and nvcc is
found; 0 never builds them; 1 always does, even with no visible GPU (build machines, containers).
Run with `pip install --no-build-isolation -e .`: the build needs the torch it will run against.
"""

import glob
import os
import sys

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def cuda_wanted() -> bool:
    choice = os.environ.get("LRFUSED_CUDA", "auto").strip().lower()
    if choice not in ("auto", "0", "1"):
        raise ValueError(f"LRFUSED_CUDA must be auto, 0 or 1, got {choice!r}")
    if choice == "0":
        return False
    has_toolkit = cpp_extension.CUDA_HOME is not None
    has_cuda_torch = __import__("torch").version.cuda is not None
    if choice == "1":
        if not (has_toolkit and has_cuda_torch):
            raise RuntimeError(
                "LRFUSED_CUDA=1 needs a CUDA build of torch and a CUDA toolkit (nvcc); "
                f"torch.version.cuda={__import__('torch').version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}"
            )
        return True
    return has_toolkit and has_cuda_torch


def extension():
    debug = os.environ.get("LRFUSED_DEBUG", "0") == "1"
    # LRFUSED_SANITIZE=1: AddressSanitizer and UndefinedBehaviorSanitizer (scripts/sanitize.sh).
    sanitize = os.environ.get("LRFUSED_SANITIZE", "0") == "1"
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    if sanitize:
        cxx_flags = [
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
        ]
    # The C++ standard is left to torch's extension tools, which know what its headers need.
    # Py_LIMITED_API is defined by torch's extension tools (py_limited_api=True).
    cxx_flags += ["-ffp-contract=off"]
    # at::parallel_for is an inline template: it only runs in parallel in code compiled with the
    # OpenMP flag (the runtime is torch's own libgomp, already loaded by `import torch`).
    link_flags = ["-fsanitize=address,undefined"] if sanitize else []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    extra = {"cxx": cxx_flags}
    if cuda_wanted():
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        # --fmad=false: no contraction into fused multiply-adds, the rule of the CPU build
        # (-ffp-contract=off), so that float32 results are bit-identical between the two kernels.
        extra["nvcc"] = ["-O3", "-lineinfo", "--fmad=false"]
        return cpp_extension.CUDAExtension(
            "lrfused._C", sources, extra_compile_args=extra, extra_link_args=link_flags, py_limited_api=True
        )
    return cpp_extension.CppExtension(
        "lrfused._C", sources, extra_compile_args=extra, extra_link_args=link_flags, py_limited_api=True
    )


setup(
    license="BSD-3-Clause",
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
