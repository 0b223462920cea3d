"""`edgestream devices ...`: enrol devices in the key file, list them, forget one (erasure by key).

An enrolled device's key derives from its region's master key *and* a secret random salt of its own
kept in the key file. ``forget`` deletes that salt and counts the envelopes of the device that Kafka
still holds, now unreadable (``workers.ops.erasure``).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgestream.commands.common import utc
from edgestream.commands.keys import DEFAULT_KEY_FILE, KeyFile
from edgestream.commands.topics import Bootstrap
from edgestream.pipeline.errors import EdgestreamError
from edgestream.workers.ops.erasure import DEFAULT_TIMEOUT_MS, Retained, forget_device, retained_envelopes

app = typer.Typer(
    help="Devices' own keys: enrol (a secret salt each), list, forget (erase every envelope of one).",
    no_args_is_help=True,
)

EXIT_ERROR: Final = 1

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)

Region = Annotated[str, typer.Option("--region", "-r", help="The device's region.", show_default=False)]
DeviceId = Annotated[str, typer.Argument(help="The device id (its Kafka key).", show_default=False)]


# -- commands --------------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(EXIT_ERROR)


def _time(ms: int | None) -> str:
    return utc(ms)


def _duration(ms: int | None) -> str:
    if ms is None:
        return "forever"
    for unit_ms, unit in ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s")):
        if ms >= unit_ms and ms % unit_ms == 0:
            return f"{ms // unit_ms} {unit}"
    return f"{ms} ms"


def _write_key_out(path: Path, document: dict[str, object]) -> None:
    """Write the device's provisioning file: private (0600), never over an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        _fail(f"cannot create {path}: {e}")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(document, indent=2) + "\n")


@app.command()
def enroll(
    device_id: DeviceId,
    region: Region,
    path: KeyFile = DEFAULT_KEY_FILE,
    key_out: Annotated[
        Path | None,
        typer.Option(
            "--key-out",
            help="Write the device's key and key id to this new file (JSON, mode 0600) to provision it.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Enrol DEVICE_ID in REGION: a secret salt of its own, so it can be forgotten later. Idempotent."""
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security import keyfile

    try:
        ring = keyfile.load(path, cache_entries=0)
        key_id = ring.current_key_id(region)
        before = ring.enrolment(region, device_id)
        key = keyfile.enroll(path, region, device_id, key_id=key_id)
    except ConfigError as e:
        _fail(str(e))
    shown = escape(device_id)
    if before is None:
        _out.print(f"{region}: device {shown} enrolled; it seals with key id {key_id}")
    else:
        _out.print(f"{region}: device {shown} was enrolled already (its key is unchanged); key id {key_id}")
    if key_out is not None:
        _write_key_out(
            key_out, {"region": region, "device_id": device_id, "key_id": key_id, "key": key.hex()}
        )
        _out.print(f"wrote its device key to {key_out}")
    else:
        _out.print("its device key was not written anywhere: run again with --key-out FILE to provision it")


@app.command("list")
def list_devices(region: Region, path: KeyFile = DEFAULT_KEY_FILE) -> None:
    """The devices enrolled in REGION, forgotten ones too (never their salts)."""
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security import keyfile

    try:
        ring = keyfile.load(path, cache_entries=0)
        ring.current_key_id(region)  # an unknown region fails here, not as an empty list
    except ConfigError as e:
        _fail(str(e))
    devices = ring.devices(region)
    table = Table(title=f"devices of {region} in {path}", title_justify="left")
    for column in ("device", "state", "enrolled", "forgotten"):
        table.add_column(column)
    for device_id, entry in devices.items():
        table.add_row(
            escape(device_id),
            "forgotten" if entry.forgotten else "enrolled",
            _time(entry.enrolled_at_ms),
            _time(entry.forgotten_at_ms),
            style="dim" if entry.forgotten else None,
        )
    _out.print(table)
    forgotten = sum(entry.forgotten for entry in devices.values())
    _out.print(
        f"{len(devices) - forgotten} enrolled, {forgotten} forgotten; a device not listed derives its key "
        "from the master key alone and cannot be forgotten"
    )


@app.command()
def forget(
    device_id: DeviceId,
    region: Region,
    path: KeyFile = DEFAULT_KEY_FILE,
    bootstrap: Bootstrap = None,
    timeout_ms: Annotated[
        int,
        typer.Option("--timeout-ms", min=1, help="Bound on each request and on a read that gets no record."),
    ] = DEFAULT_TIMEOUT_MS,
) -> None:
    """Forget DEVICE_ID of REGION: delete its salt, so none of its envelopes can be opened again.

    Then counts the envelopes of it the region's ingest topics and DLQ still hold (no consumer group).
    """
    from aiokafka.errors import KafkaError

    from edgestream.commands.topics import resolve_kafka
    from edgestream.pipeline.errors import ConfigError

    try:
        forgotten = forget_device(path, region, device_id)
    except ConfigError as e:
        _fail(str(e))
    shown = escape(device_id)
    when = _time(forgotten.tombstone.forgotten_at_ms)
    if forgotten.already:
        _out.print(f"{region}: device {shown} was forgotten already, at {when}")
    else:
        _out.print(f"{region}: device {shown} forgotten at {when}: its salt is deleted from {path}")
    kafka = resolve_kafka(bootstrap)
    try:
        retained = asyncio.run(retained_envelopes(kafka, region, device_id, timeout_ms=timeout_ms))
    except (EdgestreamError, KafkaError) as err:
        problem = str(err) if isinstance(err, EdgestreamError) else f"{type(err).__name__}: {err}"
        _fail(
            f"device {device_id!r} is forgotten, but its retained envelopes could not be counted: {problem}"
        )
    _out.print(_retained_table(retained))
    _out.print(
        f"device {shown} forgotten: {retained.envelopes} envelopes in {retained.topics_holding} topics are "
        "now unreadable (retained until their topic's retention expires)"
    )
    odd = sum(t.undecodable + t.other_device for t in retained.topics)
    if odd:
        _out.print(f"{odd} further record(s) keyed by it are not its envelopes (see the table)")
    _out.print(
        "[dim]its results and audit records are not sealed with its key: they stay readable until their "
        "topics' retention expires[/dim]"
    )


def _retained_table(retained: Retained) -> Table:
    table = Table(title=f"envelopes of {escape(retained.device_id)} still in Kafka", title_justify="left")
    table.add_column("topic")
    table.add_column("envelopes", justify="right")
    table.add_column("by key id")
    table.add_column("newest (UTC)")
    table.add_column("retention", justify="right")
    table.add_column("not envelopes", justify="right")
    table.add_column("sealed as another device", justify="right")
    for t in retained.topics:
        by_key_id = ", ".join(f"{kid}: {n}" for kid, n in sorted(t.key_ids.items())) or "-"
        table.add_row(
            t.topic,
            str(t.envelopes),
            by_key_id,
            _time(t.newest_ms),
            _duration(t.retention_ms),
            str(t.undecodable),
            str(t.other_device),
        )
    return table
