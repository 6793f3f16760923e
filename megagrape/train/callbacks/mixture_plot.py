"""The run draws its own mixture history: ``<run_dir>/plots/mixture.png`` at the end of every
invocation (a finished run, an early exit), from ``mixture.jsonl`` (initial weights included)."""

from __future__ import annotations

from tqdm import tqdm

from megagrape.errors import DataError
from megagrape.train.callbacks.base import Callback


class MixturePlotCallback(Callback):
    """Rank 0 renders α (and z) over training; a plotting problem never fails the run."""

    def on_train_end(self, trainer) -> None:
        if not trainer.is_main:
            return
        from megagrape.train.mixture_plot import plot_mixture, read_mixture

        path = trainer.run_dir / "plots" / "mixture.png"
        try:
            plot_mixture(read_mixture(trainer.run_dir / "mixture.jsonl"), path, trainer.cfg.name)
        except (DataError, OSError, ValueError) as err:
            tqdm.write(f"[megagrape] {path} not drawn: {err}")
