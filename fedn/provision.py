"""A throw-away federation CA, certificates and tokens in a work directory: what ``fedn local`` (and
``make demo``) run with, so the default path is TLS plus tokens. For a real deployment see
``docs/security.md``: the same steps, run by an operator, with the keys kept apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedn.auth.tokens import Role, TokenIssuer, generate_signing_key, load_private_key

__all__ = ["LocalSecrets", "provision"]

_TTL_S = 7 * 86400.0


@dataclass
class LocalSecrets:
    """Paths of everything provisioned; tokens are files (mode 0600), never command-line arguments."""

    directory: Path
    ca_file: Path
    signing_key: Path
    public_key: Path
    certificates: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name -> (cert, key)
    tokens: dict[str, Path] = field(default_factory=dict)  # subject -> token file
    token_ttl_s: float = _TTL_S
    _issuer: TokenIssuer | None = None

    def ensure_certificate(self, name: str, hosts: Sequence[str]) -> tuple[Path, Path]:
        """The certificate of server ``name`` for ``hosts``, issued the first time it is asked for."""
        if name not in self.certificates:
            from fedn.tls import issue_certificate

            hosts = [h for h in hosts if h] + ["127.0.0.1", "localhost"]
            self.certificates[name] = issue_certificate(
                self.directory / "ca", name, sorted(set(hosts)), self.directory / "certs", days=30
            )
        return self.certificates[name]

    def token_file(self, role: Role, subject: str) -> Path:
        """The token of ``subject`` (issued now if it has none yet)."""
        path = self.tokens.get(subject)
        if path is None:
            if self._issuer is None:
                self._issuer = TokenIssuer(load_private_key(self.signing_key))
            path = self.directory / "tokens" / f"{subject}.token"
            _write_secret(path, self._issuer.issue(role, subject, self.token_ttl_s).token)
            self.tokens[subject] = path
        return path

    def token(self, role: Role, subject: str) -> str:
        return self.token_file(role, subject).read_text().strip()


def _write_secret(path: Path, text: str) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def provision(directory: Path, servers: dict[str, Sequence[str]]) -> LocalSecrets:
    """Create a CA, a token-signing key, and a certificate for each server name with its hosts
    (``{"reducer": ["127.0.0.1"], "combiner-0": ["127.0.0.1"]}``), in ``directory``."""
    from fedn.tls import create_ca

    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_cert, _ = create_ca(directory / "ca", common_name="fedn local CA")
    signing_key, public_key = generate_signing_key(directory / "keys")
    secrets = LocalSecrets(directory, ca_cert, signing_key, public_key)
    for name, hosts in servers.items():
        secrets.ensure_certificate(name, hosts)
    return secrets


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedn.provision DIR --server reducer=reducer --combiner combiner-0 --client client-0``:
    the CA, token keys, server certificates and tokens of a Docker Compose federation, in DIR.

    ``--container-readable`` makes every file but the CA's key readable by other users (mode 0644; the
    directories stay 0700): Compose mounts each secret file with its host mode, and the image runs as a
    user of its own, which must read its key and token through that mount.
    """
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m fedn.provision", description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--server", action="append", default=[], metavar="NAME=HOST[,HOST]", help="reducer")
    parser.add_argument("--combiner", action="append", default=[], metavar="NAME", help="its host is its name")
    parser.add_argument("--client", action="append", default=[], metavar="NAME")
    parser.add_argument("--admin", default="admin", help="subject of the admin token [default admin]")
    parser.add_argument("--ttl-days", type=float, default=365.0)
    parser.add_argument("--container-readable", action="store_true")
    args = parser.parse_args(argv)
    servers = {name: hosts.split(",") for name, _, hosts in (s.partition("=") for s in args.server)}
    servers |= {name: [name] for name in args.combiner}
    secrets = provision(args.directory, servers)
    secrets.token_ttl_s = args.ttl_days * 86400.0
    secrets.token_file(Role.ADMIN, args.admin)
    for name in args.combiner:
        secrets.token_file(Role.COMBINER, name)
    for name in args.client:
        secrets.token_file(Role.CLIENT, name)
    if args.container_readable:
        for root, _, files in os.walk(args.directory):
            for f in files:
                if f != "ca.key":
                    os.chmod(os.path.join(root, f), 0o644)
    print(f"provisioned {args.directory}: CA, token keys, {len(servers)} certificates, {len(secrets.tokens)} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
