"""Delivering a model: packaging a run or an ensemble as an MLflow model with its card, the pyfunc
model behind `mlflow models serve`, batch prediction, and the diagnosis page."""
