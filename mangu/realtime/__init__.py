"""Realtime delivery: the cross-process bus (Redis pub/sub) and what builds on it."""
