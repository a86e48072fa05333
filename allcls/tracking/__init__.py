"""Everything that talks to MLflow, and the only package that imports it (the served model's
pyfunc entry aside): the store, opening a stage's run and logging to it (or to the offline
journal), finding runs, reading prediction tables and artifacts, the registry, housekeeping."""
