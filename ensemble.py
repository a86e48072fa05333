"""Compare ensemble weighting schemes over logged predictions, as `allcls-ensemble` does."""

from allcls.ensemble.cli import main

if __name__ == "__main__":
    main()
