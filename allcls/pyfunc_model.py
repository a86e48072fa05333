"""The file MLflow's models-from-code loads to build a packaged model (no pickle involved): it names
the model class; allcls.packaged_model holds it."""

from mlflow.models import set_model

from allcls.packaged_model import PackagedModel

set_model(PackagedModel())
