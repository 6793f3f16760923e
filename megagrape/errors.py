"""Exception types for input the user can fix; every message names the file/field and the fix."""


class ConfigError(ValueError):
    """A run-config field (or DeepSpeed config field) has a value that cannot work."""


class DataError(ValueError):
    """A data file, domain, tokenizer or target cannot be used as given."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (on any rank); older checkpoints are intact."""


class TrainingDiverged(RuntimeError):
    """The divergence guard stopped the run (train.divergence_max_bad_steps bad steps in a row)."""
