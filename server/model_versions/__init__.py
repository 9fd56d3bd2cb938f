"""Encoder model versions: the registry in the model repository (publish, reload, promotion) and per-version
calibration."""
