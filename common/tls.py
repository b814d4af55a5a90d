"""TLS and mutual TLS (mTLS) for the broker's and the worker's gRPC servers and for
their clients, from PEM files.

    server_tls = tls.load_server("server.pem", "server.key", client_ca="clients-ca.pem")
    port = tls.add_port(grpc_server, "0.0.0.0:50051", server_tls)  # plaintext when None
    client_tls = tls.load_client(ca="ca.pem", cert="agent.pem", key="agent.key")
    channel = tls.channel("broker.example:50051", client_tls)      # plaintext when None

With a client CA the server requires a client certificate signed by it (mTLS).
Everything is read and checked once, at start: a missing or unreadable file, a
certificate and key that do not belong together, an encrypted key, or a private key
file that group or others may access is a TlsError, which the commands report in
one line (exit status 2). Key bytes never reach a log, a repr or an error message.
"""

from __future__ import annotations

import os
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .targets import SPREAD, broker_channel_options, grpc_target


class TlsError(Exception):
    pass


@dataclass(frozen=True)
class ServerTls:
    cert_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = None  # set: clients must present a certificate it signed

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)], root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None)


@dataclass(frozen=True)
class ClientTls:
    ca: bytes | None = None  # None: the system's trusted roots
    cert_chain: bytes | None = None  # with private_key: this client's certificate (mTLS)
    private_key: bytes | None = field(default=None, repr=False)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca,
                                            private_key=self.private_key,
                                            certificate_chain=self.cert_chain)


def load_server(cert: str | None, key: str | None,
                client_ca: str | None = None) -> ServerTls | None:
    """The server's credentials; None (plaintext) when no file is named."""
    if not (cert or key or client_ca):
        return None
    if not (cert and key):
        raise TlsError("TLS needs both a certificate and its private key"
                       + (" (a client CA alone does not enable TLS)" if client_ca else ""))
    chain, private_key = _key_pair(cert, key)
    return ServerTls(chain, private_key, _ca(client_ca, "client CA") if client_ca else None)


def load_client(ca: str | None = None, cert: str | None = None, key: str | None = None, *,
                tls: bool = False) -> ClientTls | None:
    """Credentials to reach a TLS server: verify it with `ca` (or the system's roots when
    only `tls` is set), and present `cert` and `key` for mTLS. None (plaintext) when
    nothing is set."""
    if not (tls or ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise TlsError("a client certificate needs its private key, and a key its certificate")
    chain, private_key = _key_pair(cert, key) if cert and key else (None, None)
    return ClientTls(_ca(ca, "CA") if ca else None, chain, private_key)


def add_port(server: grpc.aio.Server, address: str, server_tls: ServerTls | None) -> int:
    """Listen on `address`, over TLS when given; the bound port (0 when it failed)."""
    if server_tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_tls.credentials())


def channel(target: str, client_tls: ClientTls | None, options=None) -> grpc.Channel:
    """`target`: one address, or several comma-separated to fail over (common/targets.py)."""
    target = grpc_target(target)
    if client_tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, client_tls.credentials(), options=options)


def aio_channel(target: str, client_tls: ClientTls | None, options=None) -> grpc.aio.Channel:
    target = grpc_target(target)
    if client_tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, client_tls.credentials(), options=options)


def broker_channel(target: str, client_tls: ClientTls | None, options=None, *,
                   order: str = SPREAD) -> grpc.Channel:
    """A channel to brokers: `channel` with keepalive pings that notice a broker that
    hangs (targets.BROKER_CHANNEL_OPTIONS) and fail over to the next in the list; with
    several brokers, `order` "spread" picks one at random, "listed" the first."""
    return channel(target, client_tls, broker_channel_options(target, order, options))


def broker_aio_channel(target: str, client_tls: ClientTls | None, options=None, *,
                       order: str = SPREAD) -> grpc.aio.Channel:
    return aio_channel(target, client_tls, broker_channel_options(target, order, options))


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TlsError(f"cannot read the {what} {path}: {error.strerror}") from None


def _ca(path: str, what: str) -> bytes:
    data = _read(path, what)
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError):
        raise TlsError(f"the {what} {path} holds no PEM certificate") from None
    return data


def _key_pair(cert: str, key: str) -> tuple[bytes, bytes]:
    chain = _read(cert, "certificate")
    try:
        mode = os.stat(key).st_mode
    except OSError as error:
        raise TlsError(f"cannot read the private key {key}: {error.strerror}") from None
    if mode & 0o077:
        raise TlsError(f"the private key {key} may be accessed by group or others "
                       f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {key}")
    private_key = _read(key, "private key")
    try:  # OpenSSL checks the PEM and that the key belongs to the certificate
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key,
                                                                password=_encrypted)
    except ssl.SSLError:
        raise TlsError(f"the certificate {cert} and the private key {key} are not a PEM "
                       "certificate and its matching key") from None
    return chain, private_key


def _encrypted() -> bytes:
    # gRPC cannot use an encrypted key; without this OpenSSL would prompt on the terminal.
    raise TlsError("the private key is encrypted; give gRPC an unencrypted key (mode 0600)")
