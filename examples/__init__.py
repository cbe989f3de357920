"""Example clients for fedn."""
