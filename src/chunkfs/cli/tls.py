"""``chunkfs tls``: the cluster CA, node certificates, and turning TLS on for a cluster.

A cluster made with ``make-mds -I --tls`` (or ``local up --tls``) runs TLS from
the start: its CA is made in this host's client configuration
(``$CHUNKFS_CONF_DIR/clusters/NAME/ca/``) and every node made on this host
gets its certificate at once.  These commands cover the rest:

  make-ca       make the CA of an existing cluster (before turning TLS on)
  issue DIR     give DIR (a node directory, a client configuration, or a folder
                to copy to another host) a new key and certificate in DIR/tls/
  enable DIR    turn TLS on in stopped node directories and in this host's
                client configuration (TLS is cluster-wide: stop every daemon,
                enable all, start them again)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from chunkfs.cli.context import known_cluster
from chunkfs.common import certs
from chunkfs.common.config import (
    NODE_FILE,
    ClientConfig,
    ConfigError,
    cluster_conf_path,
    load_client_config,
    load_node,
    save_client_config,
    save_node_file,
)
from chunkfs.common.daemon import daemon_pid

#: How long `tls enable` waits for each metadata server to answer in plain TCP (it must be stopped).
ANSWER_TIMEOUT = 2.0
#: The longest name a certificate takes (X.509's common name).
CERT_NAME_MAX = 64


def ca_dir(cluster: str) -> Path:
    """Where this host keeps the cluster's CA, beside the client configuration."""
    return cluster_conf_path(cluster) / certs.CA_DIR


def issue_if_possible(cluster: str, directory: Path, name: str) -> bool:
    """Issue `directory`'s certificate if this host holds the cluster CA; False if it does not.

    A node made on a host without the CA still gets made: its daemon then
    refuses to start with one line saying how to issue its certificate.
    """
    if not (ca_dir(cluster) / certs.CA_KEY).exists():
        return False
    certs.issue(ca_dir(cluster), directory / certs.TLS_DIR, name)
    return True


def tls_note(cluster: str, directory: Path, issued: bool) -> str:
    """What to tell the operator after making a node of a TLS cluster."""
    if issued:
        return f"TLS certificate issued in {directory / certs.TLS_DIR}"
    return (f"cluster {cluster!r} runs TLS but this host has no cluster CA: on the host that has it, run "
            f"`chunkfs -c {cluster} tls issue DIR` and copy DIR/{certs.TLS_DIR}/ to {directory}/{certs.TLS_DIR}/")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tls", help="the cluster CA and node certificates for TLS",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(dest="tls_command", metavar="ACTION", required=True)
    mk = tsub.add_parser("make-ca", help="make the cluster's CA in this host's client configuration",
                         description="Make the certificate authority of cluster NAME in "
                         "$CHUNKFS_CONF_DIR/clusters/NAME/ca/ (ca.key stays on this host: keep it safe). "
                         "Refuses to replace an existing CA, which every node trusts.")
    mk.set_defaults(func=cmd_make_ca)
    iss = tsub.add_parser("issue", help="write a new key and certificate into DIR/tls/",
                          description="Issue a key and a certificate signed by the cluster CA into DIR/tls/ "
                          "(node.key, node.crt and a copy of ca.crt). DIR is a node directory, a client "
                          "configuration folder, or any folder whose tls/ you then copy to another host. "
                          "Issuing again renews the certificate; restart the daemon to use it.")
    iss.add_argument("dir", type=Path, metavar="DIR")
    iss.add_argument("--name", type=_cert_name,
                     help="the name in the certificate, 1-64 characters (default: from DIR/node.json, or DIR's name)")
    iss.set_defaults(func=cmd_issue)
    en = tsub.add_parser("enable", help="turn TLS on in stopped node directories and the client configuration",
                         description="Set \"tls\": true in the cluster section of each DIR/node.json (the daemon "
                         "must be stopped) and in this host's client configuration, issuing certificates "
                         "where missing (the CA is made if there is none). TLS is cluster-wide: a node "
                         "without it cannot talk to one with it, so stop every daemon of the cluster, "
                         "enable all of them (and every client host's configuration), then start them.")
    en.add_argument("dirs", type=Path, nargs="*", metavar="DIR", help="node directories on this host")
    en.set_defaults(func=cmd_enable)


def cmd_make_ca(args: argparse.Namespace) -> int:
    cluster = known_cluster(args)
    info = load_client_config(cluster).cluster
    certs.make_ca(ca_dir(cluster), cluster, info.uuid)
    print(f"made the CA of cluster {cluster!r} in {ca_dir(cluster)}; keep {certs.CA_KEY} on this host only")
    return 0


def _cert_name_fault(name: str) -> str:
    """Why `name` cannot be a certificate's ("" if it can): a probe's 300 characters ended in the
    certificate library's traceback."""
    return "" if 1 <= len(name) <= CERT_NAME_MAX else \
        f"a certificate's name has 1 to {CERT_NAME_MAX} characters, not {len(name)}"


def _cert_name(text: str) -> str:
    fault = _cert_name_fault(text)
    if fault:
        raise argparse.ArgumentTypeError(fault)
    return text


def cmd_issue(args: argparse.Namespace) -> int:
    cluster = known_cluster(args)
    directory: Path = args.dir
    name = args.name or _node_name(directory)
    fault = _cert_name_fault(name)
    if fault:  # (a name made from DIR)
        raise ConfigError(f"{fault} ({name[:20]!r}...): give one with --name")
    certs.issue(ca_dir(cluster), directory / certs.TLS_DIR, name)
    print(f"issued a certificate for {name!r} in {directory / certs.TLS_DIR}")
    return 0


def _node_name(directory: Path) -> str:
    if (directory / NODE_FILE).exists():
        node, _ = load_node(directory)
        return f"{node.role}{node.node_id or ''}@{node.addr}"
    return directory.resolve().name or "client"


def _answering_without_tls(client: ClientConfig) -> str:
    """The address of a metadata server in `client`'s list that answers it in plain TCP, or ""."""
    from chunkfs.client.client import first_to_answer
    from chunkfs.protocol.rpc import Credentials

    creds = Credentials(client.cluster.name, client.secret, "client", f"tls-enable-{os.getpid()}")
    return asyncio.run(first_to_answer(client.mds, creds, ANSWER_TIMEOUT))[0]


def cmd_enable(args: argparse.Namespace) -> int:
    cluster = known_cluster(args)
    client = load_client_config(cluster)
    for directory in args.dirs:
        node, _ = load_node(directory)
        if node.cluster.name != cluster:
            raise ConfigError(f"{directory} is a node of cluster {node.cluster.name!r}, not {cluster!r}")
        pid = daemon_pid(directory.resolve())
        if pid is not None:
            raise ConfigError(f"the daemon of {directory} runs (pid {pid}): stop every daemon of the cluster first")
    running = _answering_without_tls(client) if not client.cluster.tls else None
    if running:
        # The client configuration alone turned on would cut this host off from a cluster still in plain TCP.
        raise ConfigError(f"cluster {cluster!r} still answers without TLS at {running}: stop every daemon, then "
                          f"run `chunkfs -c {cluster} tls enable DIR...` with their directories; nothing changed")
    if not (ca_dir(cluster) / certs.CA_KEY).exists():
        certs.make_ca(ca_dir(cluster), cluster, client.cluster.uuid)
        print(f"made the CA of cluster {cluster!r} in {ca_dir(cluster)}")
    for directory in [*args.dirs, cluster_conf_path(cluster)]:
        if not (directory / certs.TLS_DIR / certs.NODE_CERT).exists():
            name = "client" if directory == cluster_conf_path(cluster) else _node_name(directory)
            certs.issue(ca_dir(cluster), directory / certs.TLS_DIR, name)
    for directory in args.dirs:
        node, _ = load_node(directory)
        save_node_file(directory, dataclasses.replace(node, cluster=dataclasses.replace(node.cluster, tls=True)))
        print(f"TLS on in {directory}")
    save_client_config(dataclasses.replace(client, cluster=dataclasses.replace(client.cluster, tls=True)))
    print(f"TLS on in the client configuration {cluster_conf_path(cluster)}; start the daemons again")
    # (a probe: one folder enabled said nothing of the others, and the cluster then failed to start)
    covered = {load_node(directory)[0].addr for directory in args.dirs}
    left = [addr for addr in client.mds if addr not in covered]
    if left:
        print(f"warning: the metadata server(s) at {', '.join(left)} still run plain TCP: a cluster runs TLS on "
              f"every node or on none, so run `chunkfs -c {cluster} tls enable DIR...` for their folders (and "
              "every chunk server's) before starting them", file=sys.stderr)
    return 0

