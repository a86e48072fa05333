"""Train a classifier: `python train.py --help` lists the config groups; see conf/train.yaml."""

import hydra
from omegaconf import DictConfig

from allcls.errors import reports_user_errors
from allcls.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@reports_user_errors
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
