"""The benchmark harness behind ``bpedge bench``: backends to compare, the timing loop, timing
statistics, the machine's matrix-multiply ceiling, the JSON record and run-to-run comparison.

Internal: the command line (:mod:`bpedge._cli.bench`) and ``benchmarks/`` are its users.
"""
