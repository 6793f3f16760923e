"""megatron-core's blending builder: the reference the C++ segment builder is checked
(tests/unit/test_blending.py) and timed (benchmarks/bench_blending.py) against."""

from __future__ import annotations

import glob
import importlib.util
import os
from types import ModuleType


def megatron_helpers() -> ModuleType:
    """megatron.core.datasets.helpers_cpp (with ``build_blending_indices``), loaded from its
    compiled file without importing all of megatron.core."""
    spec = importlib.util.find_spec("megatron")
    for location in spec.submodule_search_locations or []:
        paths = glob.glob(os.path.join(location, "core", "datasets", "helpers_cpp*.so"))
        if paths:
            module_spec = importlib.util.spec_from_file_location("helpers_cpp", paths[0])
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
    from megatron.core.datasets import helpers_cpp

    return helpers_cpp
