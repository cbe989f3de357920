"""Authentication and authorization: signed tokens with roles, the policy table, gRPC enforcement.

See ``docs/security.md`` for the threat model and how to provision keys, certificates and tokens.
"""

from fedn.auth.policy import require_subject
from fedn.auth.tokens import Principal, Role, TokenIssuer, TokenVerifier

__all__ = ["Principal", "Role", "TokenIssuer", "TokenVerifier", "require_subject"]
