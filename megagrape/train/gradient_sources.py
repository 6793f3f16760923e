"""Where the capture's target and probe gradients come from: one class per engine layout.

Every source computes, for ``b`` rows of a batch on this rank and per-row weights ``w`` [b],

    grad of  sum_i w_i * l_i        (l_i: mean token loss of row i over its loss mask)

summed over the data-parallel ranks, as this rank's *slots*: one float32 tensor per trainable
parameter the rank holds (the whole local parameter, or its ZeRO-3 partition). Summing slot
products over ``product_group``, keeping only the ``counted`` slots, gives the product of the
full-model gradients. Rows are in eval mode (no dropout, no random numbers drawn), and a source
leaves the engine's gradient state as it found it (empty: sources run before the step's first
training backward), so training after a capture is bit-identical to training without it.

* :class:`ShadowGradients` (PP = 1, ZeRO 0-2): autograd on a shadow GPTModel whose parameters
  alias the engine's storage (no copy); DeepSpeed never wrapped it, so nothing of the engine is
  touched. Slots are whole local parameters, identical on every DP rank after one flat
  all-reduce; products sum over the TP group.
* :class:`PipelineGradients` (PP > 1): DeepSpeed's own pipeline runs the rows through the
  stages (its 1F1B training schedule without the final reductions and optimizer step), so no
  stage ever holds another stage's layers. Slots are this stage's parameters, all-reduced over
  DP; the tied embedding's two copies (first and last stage) are summed over their tied group
  and counted once. Products sum over the TP x PP group.
* :class:`PartitionedGradients` (ZeRO-3): the engine's own forward and backward (its parameter
  gathering and gradient reduce-scatter); slots are this rank's gradient partitions
  (``deepspeed.utils.safe_get_local_grad``), already reduced over DP and disjoint across DP
  ranks, so no rank ever holds a full gradient. Products sum over every rank.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
import torch.distributed as dist
from deepspeed.runtime.pipe import schedule as pipe_schedule
from deepspeed.utils import safe_get_full_grad, safe_get_local_grad

from megagrape import parallel
from megagrape.model import ModelConfig, build_model, pipeline_loss_fn, token_losses
from megagrape.model.params import counts_once


def per_row_losses(per_token: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """[b] float32 mean token loss of each row over its mask (per_token, loss_mask: [b, S])."""
    return (per_token.float() * loss_mask).sum(dim=1) / loss_mask.sum(dim=1).clamp(min=1)


def all_reduce_sum(tensors: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Sum a list of tensors over ``group`` with one flat all-reduce; returns new tensors."""
    if dist.get_world_size(group) == 1:
        return [t.clone() for t in tensors]
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat, group=group)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return out


class GradientSource(ABC):
    """Weighted-loss gradients as this rank's slots (see the module docstring)."""

    params: list[torch.nn.Parameter]  # the trainable parameters the slots belong to, in order
    counted: list[bool]  # per slot: counted in a cross-rank sum of products
    product_group: dist.ProcessGroup | None  # where slot products are summed (None: all ranks)

    @abstractmethod
    def gradient(
        self, batch: dict[str, torch.Tensor], row_weights: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(slots, this rank's sum_i w_i l_i as a float64 scalar; 0 on ranks without the loss).

        ``batch``: this rank's rows (tokens, labels, position_ids, loss_mask [b, S]), b >= 1,
        on the device; ``row_weights`` [b]. Collective over the layout's ranks.
        """

    def slot_bytes(self) -> int:
        """Bytes of one float32 gradient in slot form on this rank."""
        return 4 * sum(self.slot_numel(p) for p in self.params)

    @staticmethod
    def slot_numel(param: torch.nn.Parameter) -> int:
        return param.numel()


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Module in eval mode inside the block, its previous mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class BackwardOnlySchedule(pipe_schedule.TrainSchedule):
    """DeepSpeed's 1F1B training schedule without the tied/DP reductions and the step."""

    _DROPPED = (
        pipe_schedule.ReduceTiedGrads,
        pipe_schedule.ReduceGrads,
        pipe_schedule.OptimizerStep,
    )

    def steps(self):
        for commands in super().steps():
            yield [c for c in commands if not isinstance(c, self._DROPPED)]


class ShadowGradients(GradientSource):
    """PP = 1, ZeRO 0-2: autograd on a parameter-aliasing shadow model outside DeepSpeed."""

    def __init__(self, engine_module: torch.nn.Module, model_cfg: ModelConfig, env) -> None:
        self.shadow = build_model(model_cfg, env)
        engine_params = dict(engine_module.named_parameters())
        for name, param in self.shadow.named_parameters():
            source = engine_params.get(name)
            if source is None or source.shape != param.shape:
                raise RuntimeError(
                    f"shadow model parameter {name} does not match the engine's model"
                )
            param.data = source.data
        self.shadow.eval()  # no dropout: the capture draws no random numbers
        self.params = [p for p in engine_module.parameters() if p.requires_grad]
        self.shadow_params = [p for p in self.shadow.parameters() if p.requires_grad]
        self.counted = [counts_once(p, env.tp_rank) for p in self.params]
        self.product_group = parallel.model_parallel_group()
        self.dp_group = parallel.dp_group()

    def gradient(self, batch, row_weights):
        per_row = per_row_losses(token_losses(self.shadow, batch), batch["loss_mask"])
        objective = (per_row * row_weights.to(per_row.dtype)).sum()
        grads = torch.autograd.grad(objective, self.shadow_params, allow_unused=True)
        local = [
            (g if g is not None else torch.zeros_like(p)).to(torch.float32)
            for g, p in zip(grads, self.shadow_params)
        ]
        return all_reduce_sum(local, self.dp_group), objective.detach().double()


def _zero_engine_gradients(engine) -> None:
    """Empty every gradient buffer of the engine's optimizer (lp, hp and ZeRO partitions)."""
    engine.optimizer.zero_grad(set_to_none=True)
    engine.zero_grad()


class PipelineGradients(GradientSource):
    """PP > 1: the rows run through DeepSpeed's pipeline; slots are this stage's parameters.

    The rows are padded to whole micro-batches of ``micro_batch_size`` (weight 0) because the
    pipeline's communication buffers have the training shape. The loss function switches to a
    weighted token sum (``PipelineLoss.weighted_sum``) with the weights carried in the loss
    mask: w_i * mask_i / |mask_i|. DeepSpeed divides each micro-batch's loss by the configured
    gradient accumulation steps; the slots are multiplied back.
    """

    def __init__(self, engine, env, micro_batch_size: int) -> None:
        self.engine = engine
        self.env = env
        self.micro_batch_size = micro_batch_size
        self.loss_fn = pipeline_loss_fn(engine)
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.counted = [counts_once(p, env.tp_rank) for p in self.params]
        self.product_group = parallel.model_parallel_group()
        self.dp_group = parallel.dp_group()
        index = {id(p): i for i, p in enumerate(self.params)}
        self.tied = [
            (index[id(weight)], group)
            for weight, group in engine.module.get_tied_weights_and_groups()
            if id(weight) in index
        ]

    def _micro_batches(self, batch: dict, row_weights: torch.Tensor) -> list:
        rows = batch["tokens"].shape[0]
        size = self.micro_batch_size
        order = torch.arange(rows + (-rows) % size, device=batch["tokens"].device) % rows
        weights = torch.zeros(len(order), dtype=torch.float32, device=row_weights.device)
        weights[:rows] = row_weights.float()
        mask = batch["loss_mask"].float()[order]
        token_weights = mask * (weights / mask.sum(dim=1).clamp(min=1))[:, None]
        tokens, labels, positions = (batch[k][order] for k in ("tokens", "labels", "position_ids"))
        return [
            (
                (tokens[i : i + size], positions[i : i + size]),
                (labels[i : i + size], token_weights[i : i + size]),
            )
            for i in range(0, len(order), size)
        ]

    def gradient(self, batch, row_weights):
        engine = self.engine
        micro = self._micro_batches(batch, row_weights)
        schedule = BackwardOnlySchedule(
            micro_batches=len(micro), stages=engine.num_stages, stage_id=engine.stage_id
        )
        with _eval_mode(engine.module):
            self.loss_fn.weighted_sum = True
            engine.set_dataiterator(iter(micro))
            engine._compute_loss = True
            engine.total_loss = None
            # DeepSpeed's public entry (train_batch) always ends in an optimizer step; its
            # schedule executor runs the same forward/backward instructions without one.
            engine._exec_schedule(schedule)
            self.loss_fn.weighted_sum = False
        sums = self.loss_fn.take_weighted_sums()
        engine.total_loss = None
        scale = float(engine.gradient_accumulation_steps())
        slots = []
        for param in self.params:
            grad = safe_get_full_grad(param)
            slots.append(
                torch.zeros(param.shape, dtype=torch.float32, device=param.device)
                if grad is None
                else grad.detach().float() * scale
            )
        _zero_engine_gradients(engine)
        slots = all_reduce_sum(slots, self.dp_group)
        for index, group in self.tied:
            dist.all_reduce(slots[index], group=group)
        loss = torch.stack(sums).sum() if sums else torch.zeros((), dtype=torch.float64)
        return slots, loss.to(self.env.device)


class PartitionedGradients(GradientSource):
    """ZeRO-3: the engine's forward/backward; slots are this rank's gradient partitions.

    ZeRO-3 reduce-scatters every backward and averages over DP, so a partition holds
    (1 / DP) x the DP sum: the slots are multiplied by DP. The engine's unmanaged-accumulation
    counter (which sizes ``global_samples`` at the next step) is restored after each pass.
    """

    def __init__(self, engine, env) -> None:
        self.engine = engine
        self.env = env
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.counted = [counts_once(p, env.tp_rank) for p in self.params]
        self.product_group = None
        for param in self.params:
            if not hasattr(param, "ds_tensor"):
                raise RuntimeError("PartitionedGradients needs a ZeRO stage 3 engine")

    @staticmethod
    def slot_numel(param: torch.nn.Parameter) -> int:
        return param.ds_tensor.numel()

    def training_slots(self) -> list[torch.Tensor]:
        """This rank's accumulated gradient partitions, (1 / DP) x the DP sum, float32."""
        slots = []
        for param in self.params:
            grad = safe_get_local_grad(param)
            slots.append(
                torch.zeros(param.ds_tensor.numel(), dtype=torch.float32, device=self.env.device)
                if grad is None
                else grad.float()
            )
        return slots

    def gradient(self, batch, row_weights):
        engine = self.engine
        backward_count = getattr(engine, "_unmanaged_backward_count", None)
        with _eval_mode(engine.module):
            per_row = per_row_losses(token_losses(engine, batch), batch["loss_mask"])
            objective = (per_row * row_weights.to(per_row.dtype)).sum()
            engine.backward(objective, scale_wrt_gas=False)
        dp = float(self.env.dp_size)
        slots = [s.clone() * dp for s in self.training_slots()]
        _zero_engine_gradients(engine)
        if backward_count is not None:
            engine._unmanaged_backward_count = backward_count
        return slots, objective.detach().double()
