"""The deployable model: pipeline + regressor + interval calibrator + domain check, as an MLflow pyfunc."""
