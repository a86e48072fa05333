"""Evaluate a run, an ensemble or a checkpoint without retraining: see conf/evaluate.yaml."""

import hydra
from omegaconf import DictConfig

from allcls.errors import reports_user_errors
from allcls.evaluation.task import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@reports_user_errors
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
