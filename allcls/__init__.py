"""allcls: train, track and ensemble Acute Lymphoblastic Leukemia cell classifiers."""

import os

# albumentations 2 checks PyPI for a newer release on import; machines here are offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
