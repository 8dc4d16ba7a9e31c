"""Placeholder until the benchmark suite lands: ``make bench`` runs this."""

print("no benchmarks yet: see bench/README.md")
