"""README.md's layout table names every top-level folder, and every path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_IGNORED = {".git", ".venv", ".hypothesis", ".ruff_cache", ".import_linter_cache", ".pytest_cache", "build"}


def _table_paths() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n\n", 2)[1]
    return [p for row in table.splitlines()[2:] for p in re.findall(r"`([^`]+)`", row.split("|")[1])]


def test_every_top_level_folder_is_in_the_table():
    folders = {
        p.name + "/"
        for p in ROOT.iterdir()
        if p.is_dir() and p.name not in _IGNORED and not p.name.endswith(".egg-info")
    }
    assert folders - set(_table_paths()) == set()


def test_every_path_in_the_table_exists():
    missing = [p for p in _table_paths() if not (ROOT / p).exists()]
    assert missing == []
