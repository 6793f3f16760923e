"""Compiled kernels (csrc/, the extension ``megagrape._C``) behind typed wrappers.

``megagrape.ops`` is the only user of ``megagrape._C``; :mod:`megagrape.ops.extension` loads it
once and states the one fallback policy of every kernel.

* :func:`gram_matrix`             the fused sharded Gram matrix (CPU and CUDA)
* :func:`build_blending_segment`  the mixture sampler's blending builder (CPU)
"""

from megagrape.ops.blending import blending_kernel, build_blending_segment
from megagrape.ops.gram import gram_matrix

__all__ = ["blending_kernel", "build_blending_segment", "gram_matrix"]
