"""The live mixture sampler: which domain, and which of its samples, each global sample is.

The global sample stream is a list of segments ``(start_sample, weights)``. Inside a segment,
sample i goes to ``argmax_d w_d * max(i - S, 1) - (c_d(i) - c_d(S))`` (ties to the lowest d)
and takes that domain's next sample ``c_d(i)``: Megatron's ``build_blending_indices`` rule,
restarted at each segment start S with the per-domain counts carried over (csrc/blending.cpp,
through megagrape.ops.blending). Every domain is therefore consumed as a contiguous prefix
0, 1, 2, ... of its own (already shuffled) dataset: a weight change never repeats or skips a
sample. There is no RNG; the stream is a pure function of the segments, so every rank that
holds the same float64 weights builds the same stream (broadcasting the weights is the
caller's job).

The stream is built lazily, in chunks of ``chunk_samples`` (2^20 by default), and each chunk
keeps the per-domain counts at its start. Consumed chunks drop their arrays but keep that
snapshot, so any earlier range can be rebuilt from the nearest snapshot, and a weight change
discards only the samples already built after it.

Within a segment, after n >= 1 of its samples (see docs/sampler.md for the proof),

    -H(K-1) <= (c_d - c_d(S)) - w_d * n <= 1 - w_d,     H(m) = 1 + 1/2 + ... + 1/m,

so for K <= 2 domains the realised counts follow the weights within one sample, and within
H(K-1) (about ln K + 0.58) in general. A zero-weight domain can still receive one sample per
segment: Megatron's rule gives the lowest domain the sample when all errors are exactly zero.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megagrape.errors import DataError
from megagrape.ops.blending import build_blending_segment
from megagrape.utils.distribution import checked_distribution

MAX_DOMAINS = 32767  # domain ids are int16, as in Megatron's BlendedDataset
DEFAULT_CHUNK_SAMPLES = 1 << 20
STATE_VERSION = 1


class DomainBudgetError(DataError):
    """The mixture asks a domain for a sample beyond its fixed sample budget."""


@dataclass(frozen=True, eq=False)
class Segment:
    """Weights in force from global sample ``start_sample`` until the next segment starts.

    ``weights`` is a read-only float64 array [K] that sums to 1.
    """

    start_sample: int
    weights: np.ndarray


@dataclass(frozen=True, eq=False)
class GlobalBatch:
    """Consecutive samples of the global stream (a whole global batch, or one rank's slice).

    domain_ids: int16 [G], the domain of each sample.
    sample_ids: int64 [G], the index into that domain's dataset (0, 1, 2, ... per domain).
    """

    start_sample: int
    domain_ids: np.ndarray
    sample_ids: np.ndarray


def validate_weights(weights, names: Sequence[str], what: str = "mixture weights") -> np.ndarray:
    """Check one weight per domain, finite and >= 0, summing to 1 (``megagrape.utils.distribution``).

    Returns a new float64 array [K] renormalised to sum to 1. Errors (DataError) name
    ``what``, the offending domain and value, and the fix.
    """
    names = list(names)
    try:
        values = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{what}: cannot read {weights!r} as numbers ({exc}); give one number per domain"
        ) from exc
    if values.ndim != 1 or values.shape[0] != len(names):
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise DataError(
            f"{what}: expected {len(names)} weights, one per domain in the order [{shown}], "
            f"got an array of shape {values.shape}; give exactly one weight per domain"
        )
    return np.array(
        checked_distribution(values.tolist(), names, what=what, error=DataError), dtype=np.float64
    )


@dataclass
class _Chunk:
    """A run of built samples; ``domain_ids``/``sample_ids`` are None once dropped."""

    start: int  # global index of the first sample
    counts_at_start: np.ndarray  # int64 [K], per-domain counts before `start`
    length: int  # samples built
    domain_ids: np.ndarray | None  # int16 [capacity]
    sample_ids: np.ndarray | None  # int64 [capacity]

    @property
    def end(self) -> int:
        return self.start + self.length


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _as_int(value, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError as exc:
        raise TypeError(f"{what} must be an integer, got {value!r}") from exc


class MixtureSampler:
    """The global sample stream over K domains, as segments of fixed weights.

    domain_names: K unique names (K <= 32767). budgets: K sample budgets; taking sample #b of
    domain d with b >= budgets[d] raises DomainBudgetError (with ``budget_hint`` as the fix).
    weights: the initial weights (segment 0). global_batch_size: samples per global batch.
    chunk_samples: how many samples are built at a time.
    """

    def __init__(
        self,
        domain_names: Sequence[str],
        budgets: Sequence[int],
        weights,
        global_batch_size: int,
        budget_hint: str = "raise the domain's sample budget",
        *,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    ) -> None:
        self._names = self._check_names(domain_names)
        self._budgets = _read_only(self._check_budgets(budgets, self._names))
        self._global_batch_size = _as_int(global_batch_size, "global_batch_size")
        if self._global_batch_size < 1:
            raise DataError(f"global_batch_size must be >= 1, got {self._global_batch_size}")
        self._chunk_samples = _as_int(chunk_samples, "chunk_samples")
        if self._chunk_samples < 1:
            raise DataError(f"chunk_samples must be >= 1, got {self._chunk_samples}")
        self._budget_hint = budget_hint
        initial = validate_weights(weights, self._names, "initial mixture weights")
        self._reset([Segment(0, _read_only(initial))], consumed=0, consumed_counts=None)

    # ---- properties -------------------------------------------------------------------------

    @property
    def num_domains(self) -> int:
        return len(self._names)

    @property
    def domain_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def budgets(self) -> np.ndarray:
        """int64 [K], read-only."""
        return self._budgets

    @property
    def global_batch_size(self) -> int:
        return self._global_batch_size

    @property
    def consumed_samples(self) -> int:
        return self._consumed

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    @property
    def current_weights(self) -> np.ndarray:
        """Weights of the segment holding the next sample to be consumed (read-only [K])."""
        return self._segments[self._segment_index(self._consumed)].weights

    # ---- weight changes ---------------------------------------------------------------------

    def set_weights(self, weights, at_sample: int | None = None) -> int:
        """Start a new segment with ``weights`` at global sample ``at_sample``; return it.

        ``at_sample`` defaults to ``consumed_samples`` (the next global batch). It must not be
        before ``consumed_samples`` nor before the last segment's start; equal to the last
        segment's start, it replaces that segment's weights. Samples already built from
        ``at_sample`` on are discarded (and rebuilt lazily); nothing earlier is rebuilt.
        """
        new_weights = _read_only(validate_weights(weights, self._names, "set_weights weights"))
        at = self._consumed if at_sample is None else _as_int(at_sample, "at_sample")
        if at < self._consumed:
            raise ValueError(
                f"set_weights: at_sample={at} is in the past ({self._consumed} samples were "
                f"already consumed); pass at_sample >= {self._consumed}, or None for the next "
                "global batch"
            )
        last = self._segments[-1]
        if at < last.start_sample:
            raise ValueError(
                f"set_weights: at_sample={at} is before the last segment, which starts at "
                f"{last.start_sample}; weight changes must come in increasing sample order"
            )
        self._truncate(at)
        if at == last.start_sample:
            self._segments[-1] = Segment(at, new_weights)
        else:
            self._segments.append(Segment(at, new_weights))
            self._segment_starts.append(at)
            known = self._frontier_counts.copy() if self._frontier == at else None
            self._segment_start_counts.append(known)
        return at

    # ---- reading the stream -----------------------------------------------------------------

    def peek(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(domain_ids int16 [count], sample_ids int64 [count]) of samples [start, start+count).

        Builds what is missing; consumes nothing. Raises DomainBudgetError if a sample in the
        range lies beyond its domain's budget.
        """
        start = _as_int(start, "start")
        count = _as_int(count, "count")
        if start < 0 or count < 0:
            raise ValueError(f"peek: need start >= 0 and count >= 0, got {start}, {count}")
        end = start + count
        self._extend_to(end)
        domain_parts, sample_parts = [], []
        k = max(bisect.bisect_right(self._chunk_starts, start) - 1, 0)
        while k < len(self._chunks) and self._chunks[k].start < end:
            chunk = self._chunks[k]
            lo, hi = max(start, chunk.start), min(end, chunk.end)
            if lo < hi:
                if chunk.domain_ids is None:
                    domains, samples = self._rebuild(chunk, lo, hi)
                else:
                    domains = chunk.domain_ids[lo - chunk.start : hi - chunk.start]
                    samples = chunk.sample_ids[lo - chunk.start : hi - chunk.start]
                domain_parts.append(domains)
                sample_parts.append(samples)
            k += 1
        domain_ids = np.concatenate(domain_parts) if domain_parts else np.empty(0, np.int16)
        sample_ids = np.concatenate(sample_parts) if sample_parts else np.empty(0, np.int64)
        self._check_budgets_in(start, domain_ids, sample_ids)
        return domain_ids, sample_ids

    def next_global_batch(self) -> GlobalBatch:
        """The next ``global_batch_size`` samples; advances ``consumed_samples``."""
        domain_ids, sample_ids = self.peek(self._consumed, self._global_batch_size)
        batch = GlobalBatch(self._consumed, domain_ids, sample_ids)
        self._consumed += self._global_batch_size
        self._consumed_counts += np.bincount(domain_ids, minlength=self.num_domains)
        self._drop_consumed_chunks()
        return batch

    @staticmethod
    def dp_slice(batch: GlobalBatch, dp_rank: int, dp_size: int) -> GlobalBatch:
        """Data-parallel rank ``dp_rank``'s contiguous block [r*G/dp, (r+1)*G/dp) of a batch."""
        dp_rank = _as_int(dp_rank, "dp_rank")
        dp_size = _as_int(dp_size, "dp_size")
        size = len(batch.domain_ids)
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_slice: need 0 <= dp_rank < dp_size, got {dp_rank}, {dp_size}")
        if size % dp_size != 0:
            raise ValueError(
                f"dp_slice: the global batch has {size} samples, which {dp_size} data-parallel "
                "ranks cannot share evenly; make the global batch size a multiple of the "
                "data-parallel size"
            )
        per_rank = size // dp_size
        lo, hi = dp_rank * per_rank, (dp_rank + 1) * per_rank
        return GlobalBatch(
            batch.start_sample + lo, batch.domain_ids[lo:hi], batch.sample_ids[lo:hi]
        )

    def realised_counts(self) -> np.ndarray:
        """int64 [K]: samples consumed from each domain so far."""
        return self._consumed_counts.copy()

    # ---- checkpoint state -------------------------------------------------------------------

    def state_dict(self) -> dict:
        """JSON-serialisable state (lists, ints, floats) that rebuilds the exact stream.

        Besides the segments and ``consumed_samples`` it holds the per-domain counts at
        ``consumed_samples`` and at the start of the segment holding it, so that loading
        continues the stream without rebuilding what was consumed.
        """
        current = self._segment_index(self._consumed)
        start_counts = self._segment_start_counts[current]
        if start_counts is None:  # the segment starts exactly at consumed_samples
            start_counts = self._consumed_counts
        return {
            "version": STATE_VERSION,
            "domain_names": list(self._names),
            "budgets": [int(b) for b in self._budgets],
            "global_batch_size": self._global_batch_size,
            "segments": [
                {"start_sample": s.start_sample, "weights": [float(w) for w in s.weights]}
                for s in self._segments
            ],
            "consumed_samples": self._consumed,
            "consumed_counts": [int(c) for c in self._consumed_counts],
            "current_segment_start_counts": [int(c) for c in start_counts],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream saved by ``state_dict``.

        The domain names must match this sampler's. Budgets and the global batch size stay
        this sampler's own (the stream does not depend on them), so a resumed run may raise a
        budget that ran out.
        """
        where = "sampler state"
        if not isinstance(state, dict):
            raise DataError(f"{where}: expected a dict from MixtureSampler.state_dict()")
        missing = {
            "version",
            "domain_names",
            "segments",
            "consumed_samples",
            "consumed_counts",
            "current_segment_start_counts",
        } - set(state)
        if missing:
            raise DataError(
                f"{where}: missing keys {sorted(missing)}; was it saved by state_dict()?"
            )
        if state["version"] != STATE_VERSION:
            raise DataError(f"{where}: version {state['version']!r}, expected {STATE_VERSION}")
        names = tuple(state["domain_names"])
        if names != self._names:
            only_saved = [n for n in names if n not in self._names]
            only_here = [n for n in self._names if n not in names]
            raise DataError(
                f"{where}: the checkpoint was made with domains {list(names)} but this run has "
                f"{list(self._names)} (only in the checkpoint: {only_saved}; only in this run: "
                f"{only_here}; same names in another order count as different); resume with the "
                "same data.domains, in the same order"
            )
        segments = self._segments_from_state(state["segments"], where)
        consumed = _as_int(state["consumed_samples"], f"{where} consumed_samples")
        consumed_counts = self._counts_from_state(state["consumed_counts"], "consumed_counts")
        start_counts = self._counts_from_state(
            state["current_segment_start_counts"], "current_segment_start_counts"
        )
        current = bisect.bisect_right([s.start_sample for s in segments], consumed) - 1
        if (
            consumed < 0
            or int(consumed_counts.sum()) != consumed
            or int(start_counts.sum()) != segments[current].start_sample
            or (start_counts > consumed_counts).any()
        ):
            raise DataError(
                f"{where}: consumed_samples, consumed_counts and current_segment_start_counts "
                "do not agree (the counts must sum to their sample positions); the state is "
                "corrupt: resume from another checkpoint"
            )
        self._reset(segments, consumed=consumed, consumed_counts=consumed_counts)
        self._segment_start_counts[current] = start_counts

    # ---- internals --------------------------------------------------------------------------

    @staticmethod
    def _check_names(domain_names: Sequence[str]) -> tuple[str, ...]:
        names = tuple(domain_names)
        if not 1 <= len(names) <= MAX_DOMAINS:
            raise DataError(f"need between 1 and {MAX_DOMAINS} domains, got {len(names)}")
        for index, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise DataError(
                    f"domain name at index {index} is {name!r}; give a non-empty string"
                )
        seen: dict[str, int] = {}
        for index, name in enumerate(names):
            if name in seen:
                raise DataError(
                    f"domain name '{name}' appears twice (indices {seen[name]} and {index}); "
                    "every domain needs a unique name"
                )
            seen[name] = index
        return names

    @staticmethod
    def _check_budgets(budgets: Sequence[int], names: tuple[str, ...]) -> np.ndarray:
        values = list(budgets)
        if len(values) != len(names):
            raise DataError(
                f"budgets: expected {len(names)} sample budgets (one per domain), got {len(values)}"
            )
        checked = np.empty(len(values), dtype=np.int64)
        for index, value in enumerate(values):
            try:
                checked[index] = operator.index(value)
            except TypeError as exc:
                raise DataError(
                    f"budgets: domain '{names[index]}' has budget {value!r}; give an integer "
                    "number of samples"
                ) from exc
            if checked[index] < 0:
                raise DataError(f"budgets: domain '{names[index]}' has negative budget {value}")
        return checked

    def _segments_from_state(self, raw_segments, where: str) -> list[Segment]:
        segments: list[Segment] = []
        for index, raw in enumerate(raw_segments):
            if not isinstance(raw, dict) or not {"start_sample", "weights"} <= set(raw):
                raise DataError(
                    f"{where}: segment {index} is {raw!r}; expected a dict with start_sample "
                    "and weights"
                )
            start = _as_int(raw["start_sample"], f"{where} segment {index} start_sample")
            weights = validate_weights(raw["weights"], self._names, f"{where} segment {index}")
            previous = segments[-1].start_sample if segments else -1
            if (index == 0 and start != 0) or start <= previous:
                raise DataError(
                    f"{where}: segment {index} starts at {start}; the first segment must start "
                    "at 0 and starts must increase"
                )
            segments.append(Segment(start, _read_only(weights)))
        if not segments:
            raise DataError(f"{where}: no segments")
        return segments

    def _counts_from_state(self, raw, key: str) -> np.ndarray:
        counts = np.array(raw, dtype=np.int64)
        if counts.shape != (self.num_domains,) or (counts < 0).any():
            raise DataError(
                f"sampler state: {key} must hold {self.num_domains} counts >= 0, got {raw!r}"
            )
        return counts

    def _reset(
        self, segments: list[Segment], consumed: int, consumed_counts: np.ndarray | None
    ) -> None:
        """Start over from ``segments`` with ``consumed`` samples consumed (counts given)."""
        zeros = np.zeros(self.num_domains, dtype=np.int64)
        self._segments = list(segments)
        self._segment_starts = [s.start_sample for s in segments]
        self._segment_start_counts: list[np.ndarray | None] = [zeros.copy()] + [None] * (
            len(segments) - 1
        )
        self._consumed = consumed
        self._consumed_counts = zeros.copy() if consumed_counts is None else consumed_counts.copy()
        # Samples before `consumed` are a history chunk without arrays: rebuilt from 0 if asked.
        self._chunks: list[_Chunk] = []
        if consumed > 0:
            self._chunks.append(_Chunk(0, zeros.copy(), consumed, None, None))
        self._chunk_starts = [chunk.start for chunk in self._chunks]
        self._frontier = consumed
        self._frontier_counts = self._consumed_counts.copy()
        self._first_live_chunk = len(self._chunks)

    def _segment_index(self, sample: int) -> int:
        return bisect.bisect_right(self._segment_starts, sample) - 1

    def _build_into(
        self, begin: int, counts: np.ndarray, domain_out: np.ndarray, sample_out: np.ndarray
    ) -> None:
        """Fill samples [begin, begin+len(domain_out)); ``counts`` (at ``begin``) advances."""
        total = len(domain_out)
        done = 0
        while done < total:
            position = begin + done
            index = self._segment_index(position)
            segment = self._segments[index]
            if position == segment.start_sample:
                known = self._segment_start_counts[index]
                if known is None:
                    self._segment_start_counts[index] = counts.copy()
                elif not np.array_equal(known, counts):
                    raise DataError(
                        f"sampler state: the counts at the start of segment {index} (sample "
                        f"{position}) rebuilt from the segments differ from the saved ones; "
                        "the state is corrupt: resume from another checkpoint"
                    )
            next_start = (
                self._segment_starts[index + 1] if index + 1 < len(self._segments) else math.inf
            )
            piece = int(min(total - done, next_start - position))
            build_blending_segment(
                domain_out[done : done + piece],
                sample_out[done : done + piece],
                segment.weights,
                self._segment_start_counts[index],
                counts,
                segment.start_sample,
                position,
            )
            done += piece

    def _extend_to(self, end: int) -> None:
        """Build whole chunks until the stream reaches ``end``."""
        while self._frontier < end:
            chunk = self._chunks[-1] if self._chunks else None
            if chunk is None or chunk.domain_ids is None or chunk.length == self._chunk_samples:
                chunk = _Chunk(
                    self._frontier,
                    self._frontier_counts.copy(),
                    0,
                    np.empty(self._chunk_samples, dtype=np.int16),
                    np.empty(self._chunk_samples, dtype=np.int64),
                )
                self._chunks.append(chunk)
                self._chunk_starts.append(chunk.start)
            self._build_into(
                chunk.end,
                self._frontier_counts,
                chunk.domain_ids[chunk.length :],
                chunk.sample_ids[chunk.length :],
            )
            chunk.length = self._chunk_samples
            self._frontier = chunk.end

    def _truncate(self, at: int) -> None:
        """Discard built samples from ``at`` on (``at`` >= consumed, so those are live).

        The counts at ``at`` are the counts at the end of its chunk minus the discarded part of
        that chunk, so the cost is proportional to the samples discarded.
        """
        if at >= self._frontier:
            return
        k = bisect.bisect_right(self._chunk_starts, at) - 1
        chunk = self._chunks[k]
        end_counts = (
            self._chunks[k + 1].counts_at_start
            if k + 1 < len(self._chunks)
            else self._frontier_counts
        )
        discarded = chunk.domain_ids[at - chunk.start : chunk.length]
        self._frontier_counts = end_counts - np.bincount(discarded, minlength=self.num_domains)
        del self._chunks[k + 1 :]
        del self._chunk_starts[k + 1 :]
        if chunk.start == at:
            del self._chunks[k]
            del self._chunk_starts[k]
        else:
            chunk.length = at - chunk.start
        self._frontier = at
        self._first_live_chunk = min(self._first_live_chunk, len(self._chunks))

    def _drop_consumed_chunks(self) -> None:
        """Free the arrays of chunks consumed more than one chunk ago (snapshots stay)."""
        keep_from = self._consumed - self._chunk_samples
        while self._first_live_chunk < len(self._chunks):
            chunk = self._chunks[self._first_live_chunk]
            if chunk.end > keep_from:
                break
            chunk.domain_ids = None
            chunk.sample_ids = None
            self._first_live_chunk += 1

    def _rebuild(self, chunk: _Chunk, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples [lo, hi) of a dropped chunk, rebuilt from its start snapshot."""
        counts = chunk.counts_at_start.copy()
        position = chunk.start
        while position < lo:  # skip ahead in bounded pieces
            piece = min(lo - position, self._chunk_samples)
            scratch_domains = np.empty(piece, dtype=np.int16)
            scratch_samples = np.empty(piece, dtype=np.int64)
            self._build_into(position, counts, scratch_domains, scratch_samples)
            position += piece
        domains = np.empty(hi - lo, dtype=np.int16)
        samples = np.empty(hi - lo, dtype=np.int64)
        self._build_into(lo, counts, domains, samples)
        return domains, samples

    def _check_budgets_in(self, start: int, domain_ids: np.ndarray, sample_ids: np.ndarray) -> None:
        over = sample_ids >= self._budgets[domain_ids]
        if not over.any():
            return
        first = int(np.argmax(over))
        domain = int(domain_ids[first])
        raise DomainBudgetError(
            f"domain '{self._names[domain]}' (index {domain}) has a budget of "
            f"{int(self._budgets[domain])} samples, but the mixture asks for its sample "
            f"#{int(sample_ids[first])} (counting from 0) at global sample {start + first}; "
            f"{self._budget_hint}"
        )
