"""Local partial Gram matrix of sharded vectors: G[k, n] = sum_j <a[k][j], b[n][j]>.

A "vector" is a list of P tensors (slots): one per parameter shard, or one per flat ZeRO
partition. Slot j has the same number of elements in every vector (shapes may differ).
``gram_matrix`` calls the fused kernel ``megagrape._C.gram`` (one pass over all vectors,
fp32 products summed over short blocks and fp64 across them, deterministic order), following
the policy of :mod:`megagrape.ops.extension`: the extension is required, and CUDA tensors
with an extension built without CUDA go to ``gram_reference`` (with one warning). The
result is this rank's partial: the caller all-reduces it across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megagrape.ops.extension import built_with_cuda, extension, fall_back_to_reference

Vectors = Sequence[Sequence[torch.Tensor]]


def kernel_available(device: torch.device | str = "cpu") -> bool:
    """True when ``gram_matrix`` runs the compiled kernel for tensors on ``device``.

    Always on the CPU (and on other devices the kernel rejects with a ValueError); on CUDA
    when the extension was built with CUDA. Raises ExtensionMissingError when the extension
    is not built at all.
    """
    return torch.device(device).type != "cuda" or built_with_cuda()


def gram_matrix(a: Vectors, b: Vectors) -> torch.Tensor:
    """float64 [K, N] matrix of sum_j <a[k][j], b[n][j]>, on the tensors' device.

    a: K vectors, b: N vectors, each a sequence of P contiguous float32/bfloat16 tensors.
    Raises ValueError/TypeError naming the vector and slot when the layouts disagree.
    Passing the same list as a and b gives the K x K Gram, reading each vector once.
    """
    a_lists = [list(vector) for vector in a]
    b_lists = a_lists if b is a else [list(vector) for vector in b]
    if fall_back_to_reference("gram", _device_of(a_lists, b_lists)):
        return gram_reference(a_lists, b_lists)
    return extension().gram(a_lists, b_lists)


def gram_workspace_bytes(slot_numel: Sequence[int], k: int, n: int) -> int:
    """Bytes of float64 partials that ``gram_matrix`` allocates for K=``k`` by N=``n`` vectors
    whose slot j has ``slot_numel[j]`` elements (CPU or CUDA).

    Each slot is cut into chunks of ``extension().gram_chunk_elements`` elements, and the
    chunks are dealt to at most ``extension().gram_max_partial_rows`` rows of k x n partials,
    so this is at most gram_max_partial_rows * k * n * 8 bytes, whatever the element count.
    """
    return extension().gram_workspace_bytes(list(slot_numel), k, n)


def gram_reference(a: Vectors, b: Vectors) -> torch.Tensor:
    """The plain torch computation: for each (k, n), sum over slots of float64 dot products.

    Same shapes and device as ``gram_matrix``; no checks beyond torch's own.
    """
    device = _device_of(a, b)
    out = torch.zeros(len(a), len(b), dtype=torch.float64, device=device)
    for k, a_vector in enumerate(a):
        for n, b_vector in enumerate(b):
            total = torch.zeros((), dtype=torch.float64, device=device)
            for a_slot, b_slot in zip(a_vector, b_vector, strict=True):
                total += torch.dot(a_slot.flatten().double(), b_slot.flatten().double())
            out[k, n] = total
    return out


def _device_of(a: Vectors, b: Vectors) -> torch.device:
    """The device of the first tensor in ``a`` then ``b``; the CPU when there is none."""
    return next((t.device for vector in (*a, *b) for t in vector), torch.device("cpu"))
