"""`allcls-train` (or `python train.py`): train one classifier, or a sweep with -m; conf/train.yaml."""

from allcls.config.entry import hydra_entry

main = hydra_entry("train", "allcls.training.task:train")
