"""The cluster's certificate authority and the certificates it issues to nodes (TLS, issue 12).

A cluster that runs TLS has its own CA: made once with the cluster (``make-mds
-I --tls``, ``local up --tls``) or later (``chunkfs tls make-ca``), kept in the
administrator's client configuration (``clusters/NAME/ca/``), never on the
wire.  Every daemon and every client gets a key and a certificate signed by it
in a ``tls/`` folder of its own directory, beside a copy of the CA certificate:

    DIR/tls/ca.crt     the cluster CA: peers must present a certificate it signed
    DIR/tls/node.crt   this node's certificate
    DIR/tls/node.key   its private key (mode 0600)

Peers check each other's certificate against ``ca.crt`` (both ways: mutual
TLS), so only holders of a certificate of this cluster even reach the secret
handshake.  Keys are ECDSA P-256: small, and the cheapest handshakes that
every OpenSSL build supports.

Generated with `cryptography` (a pinned dependency) rather than the
``openssl`` command: no external program, and the same code on every host.
The daemons themselves need only the standard `ssl` module (protocol/tls.py),
so `cryptography` is imported inside the functions here: only the commands
that make certificates pay for loading it.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from chunkfs.common.durable import write_file_durably
from chunkfs.common.errors import ConfigError

CA_DIR = "ca"
TLS_DIR = "tls"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"
#: A CA outlives the nodes it signs; a node's certificate is issued again (``chunkfs tls issue``) to renew it.
CA_DAYS = 20 * 365
NODE_DAYS = 10 * 365
#: Clocks of hosts differ a little: a certificate is valid from a few minutes before it was made.
CLOCK_SLACK = datetime.timedelta(minutes=10)


def make_ca(ca_dir: Path, cluster: str, uuid: str) -> None:
    """Create the cluster CA (``ca.key``, ``ca.crt``) in `ca_dir`; refuse to replace one.

    Replacing a CA would silently cut every node off from the others, so an
    existing one is an error that says so.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if (ca_dir / CA_KEY).exists() or (ca_dir / CA_CERT).exists():
        raise ConfigError(f"{ca_dir} already holds a certificate authority; every node trusts it, so it is kept "
                          "(remove it by hand only to start the cluster's TLS over)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"chunkfs cluster {cluster}"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"chunkfs CA {uuid}"),
    ])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SLACK).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("digital_signature", "key_cert_sign", "crl_sign"), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.chmod(0o700)
    write_file_durably(ca_dir / CA_KEY, _key_pem(key), mode=0o600)
    write_file_durably(ca_dir / CA_CERT, _cert_pem(cert))


def issue(ca_dir: Path, tls_dir: Path, name: str) -> None:
    """Write a new key and a certificate for node `name`, signed by the CA in `ca_dir`, into `tls_dir`.

    A node's old key and certificate, if any, are replaced: that is how a
    certificate is renewed or a leaked key retired (the node reads them when
    it starts).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key_path, ca_cert_path = ca_dir / CA_KEY, ca_dir / CA_CERT
    for path in (ca_key_path, ca_cert_path):
        if not path.exists():
            raise ConfigError(f"{path} is missing: certificates are issued where the cluster CA is "
                              "(make one with `chunkfs -c NAME tls make-ca`)")
    try:
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert_pem = ca_cert_path.read_bytes()
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{ca_dir}: unreadable cluster CA: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_key_path}: not an ECDSA key made by chunkfs")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca_cert.subject.get_attributes_for_oid(
                NameOID.ORGANIZATION_NAME)[0].value),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SLACK).not_valid_after(now + datetime.timedelta(days=NODE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature", "key_agreement"), critical=True)
        # Every node is a TLS server (it listens) and a TLS client (it dials other nodes).
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    write_file_durably(tls_dir / NODE_KEY, _key_pem(key), mode=0o600)
    write_file_durably(tls_dir / NODE_CERT, _cert_pem(cert))
    write_file_durably(tls_dir / CA_CERT, ca_cert_pem)


def _key_usage(*allowed: str) -> Any:
    """The KeyUsage extension allowing exactly `allowed` (x509.KeyUsage wants every flag spelt out)."""
    from cryptography import x509

    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{flag: flag in allowed for flag in flags})


def _key_pem(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: object) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    assert isinstance(cert, x509.Certificate)
    return cert.public_bytes(serialization.Encoding.PEM)
