"""Compare ensemble weighting schemes over logged predictions: see conf/ensemble.yaml."""

import hydra
from omegaconf import DictConfig

from allcls.ensemble.search import run_ensemble
from allcls.errors import reports_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="ensemble")
@reports_user_errors
def main(cfg: DictConfig) -> float:
    return run_ensemble(cfg)


if __name__ == "__main__":
    main()
