"""`allcls-evaluate` (or `python evaluate.py`): evaluate a run, an ensemble or a checkpoint without
retraining; conf/evaluate.yaml."""

from allcls.config.entry import hydra_entry

main = hydra_entry("evaluate", "allcls.evaluation.task:evaluate")
