"""`allcls-ensemble` (or `python ensemble.py`): compare ensemble weighting schemes over the
predictions that training runs logged; conf/ensemble.yaml."""

from allcls.config.entry import hydra_entry

main = hydra_entry("ensemble", "allcls.ensemble.task:run_ensemble")
