"""The compiled extension ``megagrape._C`` (csrc/), loaded once, and its one fallback policy.

Policy, the same for every kernel of the extension (``gram``, ``build_blending_segment``):

1. The CPU extension is built at install time and is required. When ``megagrape._C`` cannot
   be imported, :func:`extension` raises :class:`ExtensionMissingError` (an ImportError) that
   says how to build it; no kernel silently switches to a slower pure-Python path.
2. Tensors on a CUDA device, with an extension built without its CUDA sources
   (``built_with_cuda()`` false), are computed by the kernel's pure-torch reference instead,
   with a single warning per kernel and process (:func:`fall_back_to_reference`). The
   blending builder works on host numpy arrays only, so point 2 never applies to it.

Only ``megagrape.ops`` uses this module; everything else calls the wrappers in
``megagrape.ops.gram`` and ``megagrape.ops.blending``.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType

import torch  # megagrape._C links against libtorch: torch must be loaded before it

INSTALL_HINT = (
    "build it with `bash tools/install.sh` (or `pip install --no-build-isolation -e .` in the "
    "repository root, into an environment that already has torch)"
)

_warned_kernels: set[str] = set()


class ExtensionMissingError(ImportError):
    """``megagrape._C`` cannot be imported: the package was installed without building it."""


@functools.cache
def extension() -> ModuleType:
    """The ``megagrape._C`` module, imported on the first call (policy point 1)."""
    try:
        return importlib.import_module("megagrape._C")
    except ImportError as exc:
        raise ExtensionMissingError(
            f"the compiled extension megagrape._C cannot be loaded ({exc}); {INSTALL_HINT}"
        ) from exc


def built_with_cuda() -> bool:
    """True when the extension was compiled with its CUDA sources (csrc/*.cu)."""
    return bool(extension().gram_has_cuda)


def fall_back_to_reference(kernel: str, device: torch.device) -> bool:
    """Policy point 2: True when ``kernel`` must give way to its torch reference on ``device``.

    That is the case for a CUDA ``device`` when the extension has no CUDA code; the first such
    answer for ``kernel`` warns (RuntimeWarning), later ones are silent.
    """
    if device.type != "cuda" or built_with_cuda():
        return False
    if kernel not in _warned_kernels:
        _warned_kernels.add(kernel)
        warnings.warn(
            f"megagrape._C was built without CUDA, so {kernel} on {device} runs the (slower) "
            "pure-torch reference; rebuild on a machine with a CUDA torch and nvcc on PATH: "
            f"{INSTALL_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )
    return True
