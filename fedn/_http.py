"""httpx, imported without its command-line client.

``import httpx`` also imports httpx's own command-line client (rich, pygments, click) whenever those are
installed: two thirds of the import's time, paid by every process of a federation, and fedn never runs
it. A None in ``sys.modules`` makes that one import fail, and httpx then defines a ``main`` that says the
command-line client is unavailable. Nothing changes if httpx was imported before this module.
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

__all__ = ["httpx"]
