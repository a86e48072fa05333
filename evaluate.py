"""Evaluate a run, an ensemble or a checkpoint without retraining, as `allcls-evaluate` does."""

from allcls.evaluation.cli import main

if __name__ == "__main__":
    main()
