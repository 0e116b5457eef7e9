"""ml_collections configurations: one `get_config()` per file, named data_sde_model."""
