"""The chart's render fixtures, shared with tests/chart."""

from tests.chart.conftest import chart, render

__all__ = ["chart", "render"]
