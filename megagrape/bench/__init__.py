"""The mixture benchmark: the same model and token budget under several mixture methods and seeds.

* ``spec``       presets, scales and methods -> one RunJob per (method, seed)
* ``runs``       execute jobs in worker processes, resumable through per-run result files
* ``efficiency`` curves, first crossing of a loss threshold, seed-paired token efficiency
* ``analysis``   results -> per-method finals and comparisons (every method vs uniform, GRAPE vs DoGE)
* ``plots``      loss curves over tokens (mean, min-max band over seeds) and final α bars
* ``report``     results.json, results.md and the figures

tools/bench_mixture.py is the command line; docs/benchmarks_mixture.md the measured results.
"""
