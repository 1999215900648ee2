"""The benchmark's stages as plain functions over DataFrames: they combine the paper's method
(``protocol``) with the network clients (``clients``) for one (model, dataset) pair, and know nothing of
Dagster. The assets in ``defs`` are thin wrappers around them; benchmarks and tests call them directly.

Each stage takes the upstream tables, returns its own table, and never lets one bad image stop the others:
per-image failures are rows with an ``error`` column; only configuration and authentication errors
(nothing would succeed) stop a stage.
"""
