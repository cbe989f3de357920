"""A throw-away installed distribution that registers fedn's example plug-in, for tests.

fedn's own metadata registers no plug-in (the wheel ships no ``examples`` package); a user's package
registers one through an entry point, which is what this writes: a ``.dist-info`` directory that
``importlib.metadata`` finds on ``sys.path`` (or ``PYTHONPATH`` of a child process).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_plugin_dist"]

ENTRY_POINTS = """[fedn.aggregators]
clipped_mean = examples.plugins.clipped_mean:ClippedMean
"""


def write_plugin_dist(directory: Path) -> Path:
    """Write the distribution into ``directory`` and return it, to put on ``sys.path``/``PYTHONPATH``."""
    info = directory / "fedn_example_plugins-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fedn-example-plugins\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return directory
