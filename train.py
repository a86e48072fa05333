"""Train a classifier, as `allcls-train` does: `python train.py --help` lists the config groups."""

from allcls.training.cli import main

if __name__ == "__main__":
    main()
