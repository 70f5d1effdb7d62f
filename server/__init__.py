"""Flower ServerApp of fedunlearn (thin wiring over fedunlearn.federation)."""
