"""Models packaged before allcls 0.2 name this module in the code file MLflow runs to load them
(`from allcls.packaged_model import PackagedModel`); it now lives in allcls.serving.pyfunc_model."""

from allcls.serving.pyfunc_model import PackagedModel

__all__ = ["PackagedModel"]
