"""imrelay common package: events, NATS names, config, errors, the platforms' packages, telemetry."""

__version__ = "0.1.0"
