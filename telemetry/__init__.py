"""Ingestion of device telemetry, its storage and the Prometheus metrics."""
