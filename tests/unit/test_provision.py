"""fedn local's secrets: every process it starts, or starts again, is given its own token."""

from __future__ import annotations

from pathlib import Path

from fedn.auth.tokens import Role, TokenVerifier, load_public_key
from fedn.launcher import FederationSpec, LocalFederation
from fedn.provision import provision


def test_started_and_restarted_processes_get_their_own_token(tmp_path: Path):
    fed = LocalFederation(FederationSpec(client="m:C", workdir=tmp_path))
    fed._workdir = tmp_path
    fed.secrets = provision(tmp_path / "secrets", {"reducer": ["127.0.0.1"]})
    verifier = TokenVerifier(load_public_key(fed.secrets.public_key))
    for env, variable, role, name in (
        (fed.combiner_env("combiner-3"), "FEDN_COMBINER_TOKEN_FILE", Role.COMBINER, "combiner-3"),
        (fed.client_env("client-7"), "FEDN_CLIENT_TOKEN_FILE", Role.CLIENT, "client-7"),
    ):
        token_file = Path(env[variable])
        assert token_file.stat().st_mode & 0o077 == 0, "a token file is for its owner only"
        principal = verifier.verify(token_file.read_text().strip())
        assert (principal.role, principal.subject) == (role, name)
        assert not any(token_file.read_text().strip() in value for value in env.values())  # a path, not the token
    args = fed._security_args("combiner-3", "10.0.0.2")
    assert "--token-public-key" in args and "--tls-cert" in args and not any("token-signing.key" in a for a in args)
    assert (tmp_path / "secrets").stat().st_mode & 0o077 == 0


def test_an_insecure_federation_hands_out_no_secrets(tmp_path: Path):
    fed = LocalFederation(FederationSpec(client="m:C", workdir=tmp_path, secure=False))
    fed._workdir = tmp_path
    assert "FEDN_CLIENT_TOKEN_FILE" not in fed.client_env("client-0")
    assert fed._security_args("reducer", "127.0.0.1") == []
