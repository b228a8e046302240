"""Benchmarks: batch-1 latency and throughput of every variant, beside OpenVINO's benchmark_app."""
