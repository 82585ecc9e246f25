# -*- test-case-name: tests.test_cluster -*-
"""
TLS for cluster links: every node presents a certificate signed by the
cluster's CA and verifies its peers' against it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl

__all__ = ["ClusterTLS"]


class ClusterTLS:
    """
    A node's certificate and the authority it trusts for its peers.

    :param certificate: this node's certificate with its private key.
    :param authority: the CA that signed every node's certificate.
    """

    def __init__(self, certificate: ssl.PrivateCertificate, authority: ssl.Certificate) -> None:
        self.certificate = certificate
        self.authority = authority

    @classmethod
    def from_files(cls, cert: str, key: str, ca: str) -> ClusterTLS:
        """Load PEM files: the node's certificate, its key, the CA certificate."""
        with open(cert, "rb") as f:
            cert_pem = f.read()
        with open(key, "rb") as f:
            key_pem = f.read()
        with open(ca, "rb") as f:
            ca_pem = f.read()
        return cls(ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem), ssl.Certificate.loadPEM(ca_pem))

    def server_options(self) -> Any:
        """Accept only peers with a certificate signed by the authority."""
        return self.certificate.options(self.authority)

    def client_options(self, hostname: str) -> Any:
        """Verify the peer's certificate for ``hostname``; present ours."""
        return ssl.optionsForClientTLS(hostname, trustRoot=self.authority, clientCertificate=self.certificate)
