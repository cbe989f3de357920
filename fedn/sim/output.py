"""A simulation's files: per-round metrics as JSON and CSV, and the final model as safetensors."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

from fedn.codec import encode_model
from fedn.sim.results import SimulationResult
from fedn.sim.spec import SimulationSpec

__all__ = ["write_outputs"]


def write_outputs(spec: SimulationSpec, result: SimulationResult, out_dir: Path) -> dict[str, Path]:
    """Write ``metrics.json`` (spec, machine, rounds, summary), ``metrics.csv`` and ``model.safetensors``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in result.rounds:
        columns.extend(k for k in row if k not in columns)
    paths = {
        "json": out_dir / "metrics.json",
        "csv": out_dir / "metrics.csv",
        "model": out_dir / "model.safetensors",
    }
    summary = {
        "wall_s": round(result.wall_s, 3),
        "peak_rss_mb": result.peak_rss_mb,
        "rounds_done": sum(1 for r in result.rounds if r.get("status") == "done"),
        "final": result.rounds[-1] if result.rounds else None,
        "first_failures": [{"round": r, "client": c, "error": e} for r, c, e in result.failures],
        **result.traffic,
    }
    machine = {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.machine()}
    paths["json"].write_text(
        json.dumps(
            {"spec": spec.model_dump(), "machine": machine, "summary": summary, "rounds": result.rounds}, indent=1
        )
    )
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(result.rounds)
    paths["model"].write_bytes(encode_model(result.model))
    return paths
