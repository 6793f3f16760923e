"""Experiments above the engine: the mixture benchmark and RegMix sweeps, with their figures.

Every experiment trains through ``megagrape.train`` (never the other way round).

The mixture benchmark (the same model and token budget under several methods and seeds):

* ``benchmark_spec``  presets, scales and methods -> one RunJob per (method, seed)
* ``runs``            execute jobs in worker processes, resumable through per-run result files
* ``efficiency``      curves, first crossing of a loss threshold, seed-paired token efficiency
* ``analysis``        results -> per-method finals and comparisons (every method vs uniform,
  GRAPE vs DoGE)
* ``benchmark_plots`` loss curves over tokens (mean, min-max band over seeds) and final α bars
* ``report``          results.json, results.md and the figures

RegMix: ``regmix`` (sample mixtures, fit mixture -> loss, search) and ``regmix_proxies`` (one
short static-mixture run per sampled mixture, at a benchmark scale).

Command lines: tools/bench_mixture.py, tools/regmix.py;
docs/benchmarks_mixture.md has the measured results.
"""
