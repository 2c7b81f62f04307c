"""Tools on top of both packages: the demo (``python -m pipeline.tools.demo``, what ``make demo``
runs) and the benchmarks (``python -m pipeline.tools.bench``, ``pipeline.tools.bench_cache``,
``bench_gpu.sh``). Nothing in ``pipeline`` or ``data_prep`` imports them.
"""
