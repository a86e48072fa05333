"""A job's life: signals, resume, DDP under Hydra, the sweep's own run, the end-of-launch summary,
and the Optuna study's storage."""
