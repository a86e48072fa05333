"""The training task: settings -> prepared data, model, trainer -> fit -> the best checkpoint
tested -> MLflow."""
