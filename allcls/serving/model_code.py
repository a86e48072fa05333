"""The file MLflow's models-from-code copies into a packaged model and runs to build it (nothing is
unpickled): it names the model class, which allcls.serving.pyfunc_model holds."""

from allcls.serving.pyfunc_model import name_the_model

name_the_model()
