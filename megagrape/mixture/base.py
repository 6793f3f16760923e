"""The reweighting protocol: what the trainer hands a method at an event and what it gets back.

Every R optimizer steps the trainer builds an :class:`Observation` holding the fields named in
``method.needs`` and calls ``method.update(obs)``. The method returns a
:class:`MixtureUpdate` with new domain weights α (K, float64, on the simplex) and, for methods
that keep them, task weights z (N). Methods are pure maths on small CPU tensors: no
torch.distributed, no files, no model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from megagrape.errors import ConfigError

DTYPE = torch.float64

# Every Observation field a method may declare in ``needs``.
OBSERVATION_FIELDS = frozenset(
    {
        "domain_target_gram",
        "domain_gram",
        "domain_losses",
        "domain_excess_losses",
        "target_losses",
        "previous_target_losses",
        "domain_sample_counts",
        "domain_sq_norms",
        "target_gram",
    }
)

# The Observation fields that exist only when the run has target tasks.
TARGET_FIELDS = frozenset(
    {"domain_target_gram", "target_losses", "previous_target_losses", "target_gram"}
)

Diagnostics = dict[str, float | list[float]]


@dataclass
class Observation:
    """What the trainer measured for one reweighting event (shapes: K domains, N target tasks).

    Only the fields in ``method.needs`` must be filled; tensors may have any float dtype and
    device (methods convert to float64 on the CPU).
    """

    step: int
    """Optimizer step at this event (1-based count of completed steps)."""
    lr: float
    """Current model learning rate."""
    domain_target_gram: Tensor | None = None
    """[K, N]: G[k, n] = <g_k, grad l_n>, RAW target gradients (methods scale columns)."""
    domain_gram: Tensor | None = None
    """[K, K]: <g_i, g_j>."""
    domain_sq_norms: Tensor | None = None
    """[K]: ‖g_k‖² (the diagonal of domain_gram, for methods that need only the norms:
    gradient_scaling clip/cosine)."""
    target_gram: Tensor | None = None
    """[N, N]: <grad l_n, grad l_m> of the RAW target-loss gradients (the ones in
    domain_target_gram); its diagonal gives the target gradient norms (gradient_scaling)."""
    domain_losses: Tensor | None = None
    """[K]: mean training loss per domain since the last event (NaN = domain absent)."""
    domain_excess_losses: Tensor | None = None
    """[K]: DoReMi excess loss, token mean of max(l_theta - l_ref, 0) (NaN = domain absent)."""
    target_losses: Tensor | None = None
    """[N]: current loss per target task (signal batches)."""
    previous_target_losses: Tensor | None = None
    """[N]: target losses at the previous event (GRAPE roi="measured"; optional, see grape.py)."""
    domain_sample_counts: Tensor | None = None
    """[K]: samples per domain consumed since the last event."""
    sampling_weights: Tensor | None = None
    """[K]: the distribution the sampler drew domains from since the last event, when it is not
    the method's own ``domain_weights``: the fixed s of ``apply: loss`` (the trainer fills it
    whenever it differs; not a ``needs`` field). None means the method's weights were sampled."""


@dataclass
class MixtureUpdate:
    """The result of one event; ``skipped`` set means the weights were left unchanged."""

    domain_weights: Tensor
    """[K] float64 on the simplex: what the sampler (or the loss weighting) uses next."""
    task_weights: Tensor | None
    """[N] float64 on the simplex, or None for methods without task weights."""
    diagnostics: Diagnostics = field(default_factory=dict)
    """JSON-serialisable numbers (floats or lists of floats) for mixture.jsonl/TensorBoard."""
    skipped: str | None = None
    """Why the event was skipped (e.g. a non-finite Gram entry), None when it was applied."""


@dataclass(frozen=True)
class MixtureContext:
    """Run facts every method is built with (see :func:`megagrape.mixture.build_method`)."""

    domain_names: tuple[str, ...]
    task_names: tuple[str, ...]
    initial_weights: Tensor
    """[K] float64 on the simplex (uniform when the config gives none)."""
    domain_token_counts: tuple[int, ...] | None = None


class MixtureMethod(ABC):
    """Base class of every reweighting method.

    Subclasses register with ``@register_method(name, Options)`` (which sets ``name``), declare
    ``required_needs`` (and override :attr:`needs` when options add fields), implement
    :meth:`update`, and list in ``state_fields`` the attributes (tensors, floats, ints or None)
    that make up their state; :meth:`state_dict` / :meth:`load_state_dict` serialise exactly
    those, so a resumed method gives the identical next update.

    The class-level facts below let the engine and the registry treat methods alike, without
    testing names.
    """

    name: ClassVar[str]
    """The ``mixture.method`` value, set by ``register_method``."""
    required_needs: ClassVar[frozenset[str]] = frozenset()
    """Observation fields needed whatever the options (a subset of OBSERVATION_FIELDS)."""
    needs_targets: ClassVar[bool] = False
    """Derived from ``required_needs``: True when it holds a TARGET_FIELDS entry, so the
    method cannot run without target tasks."""
    reweights: ClassVar[bool] = True
    """False for fixed mixtures: the engine then runs no reweighting events."""
    takes_initial_weights: ClassVar[bool] = True
    """False when the weights come from the method's own options (mixture.initial must stay
    uniform and is not passed)."""
    domain_diagnostics: ClassVar[frozenset[str]] = frozenset()
    """Diagnostics that are [K] lists in domain order (recorded by domain name)."""
    task_diagnostics: ClassVar[frozenset[str]] = frozenset()
    """Diagnostics that are [N] lists in target order (recorded by target name)."""
    state_fields: ClassVar[tuple[str, ...]] = ("domain_weights", "task_weights")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = cls.required_needs - OBSERVATION_FIELDS
        if unknown:
            raise TypeError(f"{cls.__name__}.required_needs: unknown fields {sorted(unknown)}")
        cls.needs_targets = bool(cls.required_needs & TARGET_FIELDS)

    def __init__(self, context: MixtureContext) -> None:
        self.domain_names = context.domain_names
        self.task_names = context.task_names
        self.domain_weights: Tensor = context.initial_weights.clone()
        self.task_weights: Tensor | None = None

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def needs(self) -> frozenset[str]:
        """Observation fields the trainer must compute at an event: ``required_needs`` plus
        those the options ask for (a subset of OBSERVATION_FIELDS)."""
        return self.required_needs

    @abstractmethod
    def update(self, obs: Observation) -> MixtureUpdate:
        """Move the weights for one event; also updates the method's internal state."""

    # ----------------------------------------------------------------- results
    def applied(self, diagnostics: Diagnostics) -> MixtureUpdate:
        """The update reporting the (already stored) current weights."""
        return MixtureUpdate(
            domain_weights=self.domain_weights.clone(),
            task_weights=None if self.task_weights is None else self.task_weights.clone(),
            diagnostics=diagnostics,
        )

    def skip(self, reason: str, diagnostics: Diagnostics | None = None) -> MixtureUpdate:
        """An update that leaves every weight unchanged and says why."""
        update = self.applied(diagnostics or {})
        update.skipped = reason
        return update

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (tensors as lists of floats): JSON-safe and exact for float64."""
        state: dict[str, Any] = {"method": self.name}
        for name in self.state_fields:
            value = getattr(self, name)
            state[name] = value.tolist() if isinstance(value, Tensor) else value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` wrote; ConfigError when it belongs to another run."""
        if state.get("method") != self.name:
            raise ConfigError(
                f"mixture state in the checkpoint is for method {state.get('method')!r} but the "
                f"config says mixture.method = {self.name!r}; resume with the same method"
            )
        missing = [name for name in self.state_fields if name not in state]
        if missing:
            raise ConfigError(
                f"mixture state for {self.name!r} lacks {missing}; checkpoint is incomplete"
            )
        restored = {}
        for name in self.state_fields:
            current, saved = getattr(self, name), state[name]
            if isinstance(saved, list):
                value = torch.tensor(saved, dtype=DTYPE)
                expected = _expected_length(self, name, current)
                if expected is not None and value.numel() != expected:
                    raise ConfigError(
                        f"mixture state {name!r} has {value.numel()} entries but this run has "
                        f"{expected}; the domains/targets changed since the checkpoint"
                    )
                restored[name] = value
            else:
                restored[name] = saved
        for name, value in restored.items():
            setattr(self, name, value)


def _expected_length(method: MixtureMethod, name: str, current: Any) -> int | None:
    if isinstance(current, Tensor):
        return current.numel()
    if name == "task_weights":
        return method.num_tasks
    return None


# ------------------------------------------------------------------------- maths
def uniform(size: int) -> Tensor:
    """The uniform distribution over ``size`` items, float64."""
    return torch.full((size,), 1.0 / size, dtype=DTYPE)


def exponentiated_step(weights: Tensor, scores: Tensor, step: float) -> Tensor:
    """Mirror-descent step on the simplex: softmax(log w + step * scores).

    Entries with weight 0 stay 0 (log 0 = -inf); ``scores`` must be finite.
    """
    return torch.softmax(torch.log(weights) + step * scores, dim=0)


def smooth(weights: Tensor, eps: float) -> Tensor:
    """(1 - eps) w + eps / size: mixes in the uniform distribution so no entry stays at 0."""
    return (1.0 - eps) * weights + eps / weights.numel()


def as_float64(tensor: Tensor) -> Tensor:
    """A detached float64 CPU copy of ``tensor``."""
    return tensor.detach().to(device="cpu", dtype=DTYPE)


def required(obs: Observation, field_name: str, shape: tuple[int, ...], method: str) -> Tensor:
    """``obs.<field_name>`` as float64 with the given shape; ValueError when the trainer left it out.

    A missing or misshapen field is a trainer bug (it computes ``method.needs``), not user input.
    """
    value = getattr(obs, field_name)
    if value is None:
        raise ValueError(
            f"method {method!r} needs Observation.{field_name} (listed in method.needs) but it is None"
        )
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value)
    if tuple(value.shape) != shape:
        raise ValueError(
            f"Observation.{field_name} has shape {tuple(value.shape)}, method {method!r} expects {shape}"
        )
    return as_float64(value)


def first_non_finite(tensor: Tensor) -> tuple[tuple[int, ...], float] | None:
    """Index and value of the first NaN/Inf entry of ``tensor`` (row-major), or None."""
    bad = ~torch.isfinite(tensor)
    if not bool(bad.any()):
        return None
    index = tuple(int(i) for i in bad.nonzero()[0])
    return index, float(tensor[index])


def non_finite_reason(
    tensor: Tensor, field_name: str, axes: Sequence[tuple[str, str, Sequence[str]]]
) -> str | None:
    """Skip reason naming the first NaN/Inf entry of an observed tensor, or None if all finite.

    ``axes`` gives, per dimension, (index symbol, kind, names), e.g. ("k", "domain", domains).
    """
    found = first_non_finite(tensor)
    if found is None:
        return None
    index, value = found
    where = ", ".join(f"{symbol}={i}" for (symbol, _, _), i in zip(axes, index))
    named = ", ".join(f"{kind} {names[i]!r}" for (_, kind, names), i in zip(axes, index))
    return f"non-finite {field_name} entry at ({where}) [{named}]: {value}"
