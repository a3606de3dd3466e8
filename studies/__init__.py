"""Studies above the evaluation engine: sweeps and the paper's tables, transfer matrices, frequency bands,
per-organ analysis, and their charts. Each runs evaluation jobs of :mod:`engine` and collects their results."""
