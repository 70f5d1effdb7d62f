"""Flower ClientApp of fedunlearn (thin message handlers over fedunlearn.training)."""
