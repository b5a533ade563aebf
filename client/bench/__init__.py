"""detserve-bench: load generator, sweeps over batching settings, baselines, reports."""
