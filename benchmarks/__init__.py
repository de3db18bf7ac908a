"""asv benchmarks for numbarnn (run with ``asv run --quick --python=same`` from the repository root)."""
