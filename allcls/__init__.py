"""allcls: train, track, ensemble and deliver Acute Lymphoblastic Leukemia cell classifiers."""

__version__ = "0.2.0"
