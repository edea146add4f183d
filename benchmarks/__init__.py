"""Benchmarks: accuracy and speed against peers, reproducible. Each is a module run from
the checkout's root, ``python -m benchmarks.NAME``; it prints a table and writes
``benchmarks/results/NAME/*.json`` with the commit, date, CPU and versions it ran with
(``python -m benchmarks.index`` lists them all)."""
