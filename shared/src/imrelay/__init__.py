"""imrelay common package: events, NATS names, config, errors, WeCom crypto, telemetry."""

__version__ = "0.1.0"
