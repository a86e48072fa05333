"""allcls: train, track, ensemble and deliver Acute Lymphoblastic Leukemia cell classifiers."""

__version__ = "0.1.0"
