"""`edgestream gateway --region R`: run a region's device gateway; `edgestream gateway directory`: write
its device directory (public auth keys) from the key file."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgestream.commands.common import fail
from edgestream.commands.keys import DEFAULT_KEY_FILE

if TYPE_CHECKING:
    from edgestream.workers.gateway.settings import GatewaySettings

app = typer.Typer(
    help="The regional device gateway (WebSocket + TLS): run it, or write its device directory.",
    invoke_without_command=True,
)

Region = Annotated[
    str | None, typer.Option("--region", "-r", help="The region (else EDGESTREAM_GATEWAY_REGION).")
]


@app.callback()
def gateway(
    ctx: typer.Context,
    region: Region = None,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (else EDGESTREAM_GATEWAY_KAFKA__*).")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Use the local development broker as gateway-<region>.")
    ] = False,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (else EDGESTREAM_GATEWAY_PORT).")
    ] = None,
) -> None:
    """Run the gateway until SIGTERM/SIGINT (without a sub-command)."""
    if ctx.invoked_subcommand is not None:
        return
    from edgestream.workers.gateway.server import Gateway

    settings = _settings(region, bootstrap, local, port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Gateway(settings):
            await stop.wait()

    from aiokafka.errors import KafkaError

    from edgestream.pipeline import eventloop
    from edgestream.pipeline.errors import EdgestreamError

    try:  # uvloop, as the edge worker: its TLS and socket writes cost less CPU per frame
        eventloop.run(main(), "uvloop")
    except (EdgestreamError, KafkaError, OSError) as err:
        fail(str(err))


def _settings(region: str | None, bootstrap: str | None, local: bool, port: int | None) -> GatewaySettings:
    import os

    from pydantic import ValidationError

    from edgestream.pipeline.security.identities import Identity
    from edgestream.pipeline.settings import KafkaEnv
    from edgestream.workers.gateway.settings import GatewaySettings
    from edgestream.workers.local.broker.process import local_kafka

    overrides: dict[str, object] = {} if region is None else {"region": region}
    if port is not None:
        overrides["port"] = port
    if bootstrap is not None:
        overrides["kafka"] = KafkaEnv().settings(bootstrap)
    if local:
        name = region or os.environ.get("EDGESTREAM_GATEWAY_REGION") or "eu-west"
        kafka = local_kafka(Identity.gateway(name))
        if kafka is None:
            fail("--local: the local broker is not running (edgestream broker start)", code=2)
        overrides["kafka"] = kafka
    try:
        return GatewaySettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        fail(f"invalid gateway settings (pass --bootstrap or --local for the brokers): {err}", code=2)


@app.command()
def directory(
    region: Annotated[str, typer.Option("--region", "-r", help="The region.", show_default=False)],
    devices: Annotated[
        int,
        typer.Option("--devices", min=0, help="Include the fleet's ids dev-<region>-00000.. (this many)."),
    ] = 0,
    ids: Annotated[
        Path | None, typer.Option("--ids", help="A file of device ids, one a line.", dir_okay=False)
    ] = None,
    key_file: Annotated[
        Path, typer.Option("--key-file", help="The key file.", dir_okay=False)
    ] = DEFAULT_KEY_FILE,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write (default: <home>/gateway/<region>/directory.json)."),
    ] = None,
    home: Annotated[Path, typer.Option("--home", file_okay=False)] = Path(".edgestream"),
) -> None:
    """Write the device directory (public auth keys only) of the named and enrolled devices."""
    from edgestream.pipeline.contract.gatewayauth import write_directory
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.security import keyfile
    from edgestream.workers.gateway.provision import directory_from_keyring, fleet_device_ids
    from edgestream.workers.gateway.settings import DIRECTORY_FILE

    try:
        ring = keyfile.load(key_file)
        named = fleet_device_ids(region, devices)
        if ids is not None:
            named += [line.strip() for line in ids.read_text().splitlines() if line.strip()]
        keys = directory_from_keyring(ring, region, named)
        path = out or home / "gateway" / region / DIRECTORY_FILE
        write_directory(path, region, keys)
    except (EdgestreamError, OSError, ValueError) as err:
        fail(str(err))
    typer.echo(f"wrote {len(keys)} devices to {path}")
