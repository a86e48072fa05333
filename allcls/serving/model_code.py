"""The file MLflow's models-from-code copies into a packaged model and runs to build it (nothing is
unpickled): it names the model class, which allcls.serving.pyfunc_model holds."""

from mlflow.models import set_model

from allcls.serving.pyfunc_model import PackagedModel

set_model(PackagedModel())
