"""TLS contexts for a node of a cluster that runs TLS, from its ``tls/`` folder (see common/certs.py).

TLS is a layer under the secret handshake, not a replacement for it: a peer
must present a certificate signed by the cluster CA *and* then prove the
cluster secret.  Both ends present certificates (mutual TLS), so a stranger
on the network gets no further than the TLS handshake, and what crosses the
wire -- chunk data, metadata, the secret handshake itself -- is encrypted and
integrity-checked.

Host names are not checked: nodes dial addresses handed out by the master,
listed in node.json or routed through tunnels (``peer_routes``), which need not
match any name in a certificate.  What a certificate proves is membership of
this cluster (the CA signs only its nodes); which node a peer is, the secret
handshake and the cluster's own records say.  TLS 1.3 only: every OpenSSL
this runs on has it, and it keeps the handshake to one round trip.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from chunkfs.common.certs import CA_CERT, NODE_CERT, NODE_KEY, TLS_DIR
from chunkfs.common.config import ClusterInfo
from chunkfs.common.errors import ConfigError

#: Handshake steps of the start-up self-test (a TLS 1.3 handshake takes three).
_SELF_TEST_STEPS = 16


@dataclass(slots=True, frozen=True)
class TlsContexts:
    """One node's TLS settings: for the connections it accepts, and for those it opens."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def node_tls(directory: Path, cluster: ClusterInfo) -> TlsContexts | None:
    """The contexts of the node (or client configuration) in `directory` if `cluster` runs TLS, else None."""
    return load_tls(directory / TLS_DIR, cluster.name) if cluster.tls else None


def load_tls(tls_dir: Path, cluster: str) -> TlsContexts:
    """Build the contexts from `tls_dir` and check at once that they work together.

    Any problem -- a missing or unreadable file, a key that does not match its
    certificate, a certificate not signed by the CA or expired -- is a
    one-line `ConfigError` at start-up that names the file and what to do,
    not a refused connection later.
    """
    node_dir = tls_dir.parent
    fix = (f"issue one with `chunkfs -c {cluster} tls issue {node_dir}` on the host that holds the cluster CA "
           f"and copy its {tls_dir.name}/ folder here")
    ca, cert, key = tls_dir / CA_CERT, tls_dir / NODE_CERT, tls_dir / NODE_KEY
    for path in (ca, cert, key):
        if not path.is_file():
            raise ConfigError(f"{path} is missing: cluster {cluster!r} runs TLS, so every node needs a "
                              f"certificate of the cluster CA; {fix}")
    contexts = []
    for purpose in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # Set before verify_mode: a client context refuses CERT_REQUIRED changes while it checks host names.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED  # the server asks for the client's certificate too
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{ca}: unreadable CA certificate ({_reason(exc)}); {fix}") from None
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{cert} or {key}: unreadable, or the key does not match the certificate "
                              f"({_reason(exc)}); {fix}") from None
        contexts.append(ctx)
    server, client = contexts
    # No session tickets: connections are long-lived and never resumed; tickets would only cost bytes.
    server.num_tickets = 0
    _self_test(server, client, cert, ca, fix)
    return TlsContexts(server=server, client=client)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _self_test(server: ssl.SSLContext, client: ssl.SSLContext, cert: Path, ca: Path, fix: str) -> None:
    """Run one handshake of this node with itself in memory: a certificate its CA does not accept fails here."""
    pipes = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    ends = [
        client.wrap_bio(pipes[0][0], pipes[0][1], server_side=False),
        server.wrap_bio(pipes[1][0], pipes[1][1], server_side=True),
    ]
    done = [False, False]
    try:
        for _ in range(_SELF_TEST_STEPS):
            for i, end in enumerate(ends):
                if not done[i]:
                    try:
                        end.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
                # What one end wrote is what the other reads.
                outgoing = pipes[i][1].read()
                if outgoing:
                    pipes[1 - i][0].write(outgoing)
            if all(done):
                return
    except ssl.SSLError as exc:
        raise ConfigError(f"{cert} is not accepted by {ca} ({_reason(exc)}); {fix}") from None
    raise ConfigError(f"{cert}: a TLS handshake with itself did not finish; {fix}")
