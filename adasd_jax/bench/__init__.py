"""Benchmarks: datasets, the interleaved runner, peers, reports, roofline."""
