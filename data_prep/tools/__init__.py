"""Tools on top of data_prep, never imported by it: the benchmarks (``python -m
data_prep.tools.bench``, ``bench_layouts``, ``bench_wikitext``) and the synthetic corpora they and
the tests use (:mod:`.synth`)."""
