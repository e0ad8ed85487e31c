"""Prediction: batch, streaming, Spark; REST API."""
