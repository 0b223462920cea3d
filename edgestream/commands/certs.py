"""`edgestream certs ...`: the development PKI for mutual TLS: create, issue, rotate, retire, list."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from edgestream.pipeline.security.identities import Identity
    from edgestream.pipeline.security.pki import CertInfo, Pki, TlsFiles

app = typer.Typer(
    help="Development PKI for mutual TLS with Kafka: a CA, a certificate per identity, rotation.",
    no_args_is_help=True,
)

EXIT_ERROR = 1

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)

Home = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Local state directory; the PKI lives in HOME/tls (default: .edgestream).",
        show_default=False,
        file_okay=False,
    ),
]
Principal = Annotated[
    str,
    typer.Argument(
        help="Kafka principal: broker, admin, aggregator, edge-, device-, gateway- or backend-<region>.",
        show_default=False,
    ),
]
Name = Annotated[
    str | None,
    typer.Argument(
        help="The holder's name (CN); default: worker for edge-*, gateway for device-*, else PRINCIPAL.",
        show_default=False,
    ),
]
Days = Annotated[
    int | None,
    typer.Option(
        "--days", min=1, help="Validity of the certificate in days (default: 30).", show_default=False
    ),
]


def _fail(message: str) -> NoReturn:
    _err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(EXIT_ERROR)


def _pki(home: Path | None) -> Pki:
    from edgestream.pipeline.security.pki import Pki
    from edgestream.pipeline.settings import DEFAULT_HOME

    return Pki.in_home(home if home is not None else DEFAULT_HOME)


def _identity(principal: str, name: str | None) -> Identity:
    from edgestream.pipeline.security.identities import Identity

    try:
        return Identity.of(principal, name)
    except ValueError as e:
        _fail(str(e))


def _days(days: int | None) -> int:
    from edgestream.pipeline.security.pki import DEFAULT_LEAF_DAYS

    return days if days is not None else DEFAULT_LEAF_DAYS


def _status_table(pki: Pki, infos: list[CertInfo], fresh: frozenset[int] = frozenset()) -> Table:
    """One row per certificate; serials in ``fresh`` are marked as just issued."""
    from edgestream.pipeline.security.pki import RENEW_WITHIN

    table = Table(
        title=f"Certificates in {pki.root}",
        title_justify="left",
        caption="The subject of PRINCIPAL/NAME is CN=NAME,OU=PRINCIPAL,O=edgestream.",
        caption_justify="left",
    )
    table.add_column("identity", overflow="fold")
    table.add_column("pair")
    table.add_column("serial", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    table.add_column("days left", justify="right")
    table.add_column("signed by")
    for info in infos:
        identity = info.issuer if info.identity is None else str(info.identity)
        if info.serial in fresh:
            identity = f"[green]{identity} (new)[/green]"
        days = str(info.days_left)
        if info.days_left < 0:
            days = f"[red]{days}[/red]"
        elif info.days_left < RENEW_WITHIN.days:
            days = f"[yellow]{days}[/yellow]"
        signed_by = "[red]untrusted CA[/red]" if info.signed_by == "untrusted" else f"{info.signed_by} CA"
        serial = f"{info.serial:x}"[:8]
        table.add_row(identity, info.slot, serial, f"{info.not_after:%Y-%m-%d}", days, signed_by)
    return table


def _print_files(files: TlsFiles) -> None:
    _out.print(
        f"  certificate {files.cert_file}\n  key         {files.key_file}\n  trust       {files.ca_file}"
    )


@app.command()
def init(
    home: Home = None,
    region: Annotated[
        list[str] | None,
        typer.Option(
            "--region",
            "-r",
            help="Region to issue edge-<region> and device-<region> for; repeat for several. "
            "Default: the default regions.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create the CA and the certificates of every identity (idempotent).

    Identities: broker, admin, aggregator, registry (the artifact server), and edge-<region>/worker,
    device-<region>/gateway, backend-<region>/subscriber, gateway-<region>/gateway (the device
    gateway's Kafka client) and gateway-<region>/wss (its WebSocket server certificate) per region.

    Existing certificates are kept unless they expire within 7 days or no trusted CA signed them.
    """
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security.identities import GATEWAY_SERVER_NODE, Identity
    from edgestream.pipeline.settings import DEFAULT_REGIONS

    pki = _pki(home)
    regions = region or [r.name for r in DEFAULT_REGIONS]
    try:
        identities = [Identity.broker(), Identity.admin(), Identity.aggregator(), Identity.registry()]
        for name in dict.fromkeys(regions):
            identities += [Identity.edge(name), Identity.device(name), Identity.backend(name)]
            identities += [Identity.gateway(name), Identity.gateway(name, GATEWAY_SERVER_NODE)]
        before = {info.serial for info in pki.status()}
        pki.ensure(identities)
        infos = pki.status()
    except (ConfigError, ValueError) as e:
        _fail(str(e))
    fresh = frozenset(info.serial for info in infos if info.serial not in before)
    _out.print(_status_table(pki, infos, fresh))
    _out.print(f"{len(fresh)} new, {len(infos) - len(fresh)} kept. Trust bundle: {pki.ca_file}")


@app.command()
def issue(
    principal: Principal,
    name: Name = None,
    days: Days = None,
    home: Home = None,
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="Broker, gateway-* and registry only: another DNS name or IP it is reached by (repeat), "
            "e.g. kafka-1."
        ),
    ] = None,
) -> None:
    """Issue a new key and certificate for an identity from the current CA, replacing its current pair."""
    from edgestream.pipeline.errors import ConfigError

    pki = _pki(home)
    identity = _identity(principal, name)
    try:
        files = pki.issue(identity, _days(days), hosts=host or ())
    except (ConfigError, ValueError) as e:
        _fail(str(e))
    _out.print(f"issued {identity}")
    _print_files(files)


@app.command()
def rotate(principal: Principal, name: Name = None, days: Days = None, home: Home = None) -> None:
    """Issue a new pair for an identity, keeping the old pair valid as 'previous' until `certs retire`."""
    from edgestream.pipeline.errors import ConfigError

    pki = _pki(home)
    identity = _identity(principal, name)
    try:
        files = pki.rotate(identity, _days(days))
    except (ConfigError, ValueError) as e:
        _fail(str(e))
    _out.print(f"rotated {identity}: the new pair is current, the old one stays until `certs retire`")
    _print_files(files)


@app.command()
def retire(principal: Principal, name: Name = None, home: Home = None) -> None:
    """Delete an identity's previous key and certificate (after every user moved to the new pair)."""
    from edgestream.pipeline.errors import ConfigError

    pki = _pki(home)
    identity = _identity(principal, name)
    try:
        pki.retire(identity)
    except ConfigError as e:
        _fail(str(e))
    _out.print(f"retired the previous pair of {identity}")


@app.command("rotate-ca")
def rotate_ca(home: Home = None) -> None:
    """Create a new CA and trust both it and the old one; re-issue (`certs rotate`) each identity next."""
    from edgestream.pipeline.errors import ConfigError

    pki = _pki(home)
    try:
        pki.rotate_ca()
    except ConfigError as e:
        _fail(str(e))
    _out.print(
        f"new CA; {pki.ca_file} now trusts both CAs. Next: `edgestream broker reload-tls` (the broker "
        "trusts both), `certs issue broker` + `broker reload-tls`, rotate and retire each identity "
        "(clients pick up new files when they reconnect), then `certs retire-ca` + `broker reload-tls`."
    )


@app.command("retire-ca")
def retire_ca(home: Home = None) -> None:
    """Stop trusting the previous CA and delete its key; lists certificates it signed, now invalid."""
    from edgestream.pipeline.errors import ConfigError

    pki = _pki(home)
    try:
        orphans = pki.retire_ca()
    except ConfigError as e:
        _fail(str(e))
    _out.print(
        f"retired the previous CA; {pki.ca_file} trusts the current CA only. "
        "Run `edgestream broker reload-tls` so the broker stops trusting it too."
    )
    for info in orphans:
        _err.print(
            f"[yellow]warning:[/yellow] the {info.slot} pair of {info.identity} was signed by the "
            "retired CA: re-issue it (`certs issue` or `certs init`)"
        )


@app.command("list")
def list_(home: Home = None) -> None:
    """List the CAs and every identity's certificates with expiry and signing CA."""
    from edgestream.pipeline.errors import ConfigError

    pki = _pki(home)
    try:
        infos = pki.status()
    except ConfigError as e:
        _fail(str(e))
    if not infos:
        _out.print(f"no certificates in {pki.root}: run `edgestream certs init`")
        return
    _out.print(_status_table(pki, infos))
