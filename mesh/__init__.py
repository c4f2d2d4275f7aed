"""The service kernel shared by every nearby service: start-up, health,
reflection, identity, errors, logs, metrics, settings, storage helpers."""
