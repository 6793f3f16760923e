"""Build megagrape and its C++ extension ``megagrape._C`` (csrc/).

The extension is compiled once, at install time, with torch.utils.cpp_extension:

    pip install torch==2.13.0            # CPU wheel; pick the CUDA wheel on GPU machines
    pip install --no-build-isolation -e .

``--no-build-isolation`` makes pip build against the torch already installed instead of
fetching the newest (CUDA) torch into an isolated build environment. CUDA sources in
csrc/ (``*.cu``) are compiled only when torch was built with CUDA and nvcc is found;
the CPU build always works. Set ``MEGAGRAPE_FORCE_CPU=1`` to skip CUDA sources.
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def _with_cuda() -> bool:
    import torch

    if os.environ.get("MEGAGRAPE_FORCE_CPU") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    cpp_sources = sorted(glob.glob("csrc/*.cpp"))
    cxx_flags = ["-O3", "-fopenmp"]  # the C++ standard: torch's own (C++20 for torch 2.13)
    if _with_cuda():
        return CUDAExtension(
            name="megagrape._C",
            sources=cpp_sources + sorted(glob.glob("csrc/*.cu")),
            define_macros=[("MEGAGRAPE_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        name="megagrape._C",
        sources=cpp_sources,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="megagrape",
    version="0.1.0",
    description="Megatron-core GPT pretraining on DeepSpeed with online data-mixture optimisation (GRAPE)",
    packages=find_packages(include=["megagrape", "megagrape.*"]),
    python_requires=">=3.10",
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
