"""``python -m bench``: run every benchmark at its default size; each prints JSON lines."""

from bench import aggregation, grpc_load

aggregation.main([])
grpc_load.main([])
