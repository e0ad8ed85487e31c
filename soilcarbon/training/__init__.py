"""Training: configs, cross-validation schemes, candidate models, search, MLflow logging."""
