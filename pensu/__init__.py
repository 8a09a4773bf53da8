"""Pensu: real-time anomaly detection and forecasting for Graphite metrics on Kafka."""

__version__ = "0.1.0"
