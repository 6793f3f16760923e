"""megagrape: Megatron-core GPT pretraining on DeepSpeed with online data-mixture optimisation."""

__version__ = "0.1.0"
