"""The dashboard the reducer serves at ``/``: static pages (open) over the token-protected REST API."""

from reducer.dashboard.routes import create_dashboard

__all__ = ["create_dashboard"]
