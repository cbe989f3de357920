"""``python -m bench``: run every benchmark at its default size; each prints JSON lines."""

from bench import aggregation, async_compare, flower_compare, grpc_load, sim

aggregation.main([])
sim.main([])
grpc_load.main([])
async_compare.main([])
flower_compare.main([])
