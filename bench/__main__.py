"""``python -m bench``: run every benchmark at its default size; each prints JSON lines."""

from bench import aggregation, flower_compare, grpc_load, sim

aggregation.main([])
sim.main([])
grpc_load.main([])
flower_compare.main([])
