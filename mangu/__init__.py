"""MANGU realtime server: the core library (knows nothing of handlers/)."""

__version__ = "0.1.0"
