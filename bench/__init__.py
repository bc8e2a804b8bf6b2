"""Benchmarks (one ``bench_*.py`` module per kernel, all run by ``bench/run_all.py``) and the test- and
bench-only adapters to peer packages (:mod:`bench.peers`)."""
