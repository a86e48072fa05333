"""`allcls-train` (or `python train.py`): train one classifier, or a sweep with -m; conf/train.yaml."""

from allcls.config.entry import hydra_entry
from allcls.jobs import optuna_study

main = hydra_entry("train", "allcls.training.task:train", resolvers=optuna_study.RESOLVERS)
