"""One run: its config schema, grid keys and identity, composition and validation, run directory, training."""
