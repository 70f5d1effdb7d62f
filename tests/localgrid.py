"""The tests' in-process grid: the library's own (fedunlearn.federation.inprocess), under its old name.

The end-to-end tests in tests/test_simulation.py use Flower's own engine; this grid lets unit tests
drive many rounds in seconds and inject faults (``before_send``).
"""

from __future__ import annotations

from fedunlearn.federation.inprocess import InProcessGrid as LocalGrid

__all__ = ["LocalGrid"]
