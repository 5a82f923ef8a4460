"""ml_collections configs: one file per dataset, plus `default` and `demo`."""
