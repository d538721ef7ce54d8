"""`dengine certs make`: a test CA and node/client certificates (`dengine.certs`)."""

from __future__ import annotations

import json

import click


@click.group()
def certs() -> None:
    """Certificates for trying TLS out (docs/operations.md, "TLS")."""


@certs.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--nodes", type=click.IntRange(min=0), default=3, show_default=True,
              help="Node certificates node1.crt .. nodeN.crt (server and client use).")
@click.option("--node", "names", multiple=True, metavar="NAME",
              help="A node certificate NAME.crt (repeat; instead of --nodes).")
@click.option("--client", "clients", multiple=True, metavar="NAME",
              help="A client certificate NAME.crt, common name NAME (repeat; default: "
                   "one named 'client').")
@click.option("--host", "hosts", multiple=True, metavar="HOST",
              help="Host name or IP address the node certificates are valid for (repeat; "
                   "default: 127.0.0.1, ::1, localhost).")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True,
              help="Validity of the new certificates.")
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def make(directory: str, nodes: int, names: tuple[str, ...], clients: tuple[str, ...],
         hosts: tuple[str, ...], days: int, as_json: bool) -> None:
    """Write a CA (DIRECTORY/ca.crt, ca.key; an existing one is reused) and certificates
    signed by it (NAME.crt, NAME.key; keys readable by their owner only)."""
    from dengine.certs import DEFAULT_HOSTS
    from dengine.certs import make as make_certs

    node_names = list(names) or [f"node{i}" for i in range(1, nodes + 1)]
    made = make_certs(directory, nodes=node_names, clients=list(clients) or ["client"],
                      hosts=list(hosts) or list(DEFAULT_HOSTS), days=days)
    files = [str(p) for p in made.files]
    if as_json:
        click.echo(json.dumps({"ca_cert": str(made.ca_cert), "ca_key": str(made.ca_key),
                               "ca_created": made.ca_created, "files": files}))
        return
    click.echo(f"{'created' if made.ca_created else 'reused'} CA {made.ca_cert} "
               f"(key {made.ca_key}: keep it private)")
    for path in files:
        click.echo(f"wrote {path}")
