"""``python -m bench``: run every benchmark at its default size."""

from bench import aggregation

aggregation.main([])
