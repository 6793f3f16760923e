"""Which parameters are split, replicated or shared across ranks (for norms and Gram sums).

* Tensor-parallel split: megatron sets ``param.tensor_model_parallel = True`` (with
  ``partition_dim`` / ``partition_stride``) on column/row-parallel weights, column-parallel
  biases and the vocab-parallel embedding / output head. Each TP rank holds a different slice.
* Tensor-parallel duplicates: everything else (norm weights/biases, row-parallel biases
  ``linear_proj.bias`` / ``linear_fc2.bias``, learned position embeddings) is replicated on
  every TP rank with identical values and gradients.
* Pipeline-tied: with PP > 1 and tied embeddings, the last stage's output-head weight is a
  copy of the first stage's word embedding; DeepSpeed marks the copy
  ``ds_pipe_replicated = True`` and sums the two gradients before the optimizer step.

A sum over ranks of per-parameter quantities (squared norms, dot products) counts each
full parameter exactly once when it keeps the parameters for which ``counts_once`` is True.
"""

from __future__ import annotations

import torch


def is_tensor_parallel_split(param: torch.nn.Parameter) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def counts_once(param: torch.nn.Parameter, tp_rank: int) -> bool:
    """Whether this rank's copy of ``param`` is the one to count in a cross-rank sum."""
    if getattr(param, "ds_pipe_replicated", False):
        return False
    return is_tensor_parallel_split(param) or tp_rank == 0
