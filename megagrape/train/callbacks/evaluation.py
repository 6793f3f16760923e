"""Target evaluation at targets.eval_interval and at the end of the run."""

from __future__ import annotations

from tqdm import tqdm

from megagrape.train.callbacks.base import Callback, due
from megagrape.train.evaluation import evaluate_tasks


def evaluate_targets(trainer, final: bool = True) -> dict[str, dict[str, float]]:
    """Score every target task (collective; every rank gets the results) and record them.

    ``final`` forces full scores (acc, acc_norm, loss) whatever targets.eval_mode says.
    Returns {task: {metric: value}}; also written to TensorBoard as target/<task>/<metric>
    and appended to ``trainer.history["eval"]``.
    """
    cfg = trainer.cfg
    tcfg = cfg.targets
    results = evaluate_tasks(
        trainer.module.engine,
        trainer.data.tasks,
        cfg.model.seq_length,
        tcfg.eval_max_items,
        trainer.data.tokenizer.eod,
        tcfg.eval_batch_size,
        trainer.env,
        trainer.dp_group,
        pipeline_shape=trainer.module.pipeline_shape,
        mode="full" if final else tcfg.eval_mode,
    )
    trainer.metrics.scalars(
        trainer.step,
        {
            f"target/{task}/{metric}": value
            for task, scores in results.items()
            for metric, value in scores.items()
        },
        tokens=trainer.consumed_tokens,
    )
    if trainer.is_main:
        summary = ", ".join(
            f"{task} " + " ".join(f"{m}={v:.3f}" for m, v in scores.items())
            for task, scores in results.items()
        )
        tqdm.write(f"[eval] step {trainer.step}: {summary}")
    trainer.history["eval"].append({"step": trainer.step, "results": results})
    trainer.last_eval = results
    return results


class EvaluationCallback(Callback):
    """Evaluates every targets.eval_interval steps, or once at the end when the interval is 0."""

    def on_step_end(self, trainer, record) -> None:
        if not trainer.data.tasks:
            return
        interval = trainer.cfg.targets.eval_interval
        if due(trainer.step, interval) or (trainer.done and not interval):
            evaluate_targets(trainer, final=trainer.done)
