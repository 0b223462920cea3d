"""`edgestream topics quotas`: the client quotas on each region's device principal (apply or check)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from edgestream.commands.topics import (
    EXIT_MISMATCH,
    Bootstrap,
    TimeoutMs,
    _bootstrap,
    _err,
    _fail,
    _out,
    _where,
    app,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from edgestream.topics.quotas import DeviceQuotas, QuotaChange, QuotaEntity, QuotaKey

EXIT_QUOTAS_DIFFER = EXIT_MISMATCH
"""``quotas --check``: the broker's quotas differ from the policy (2, as ``topics create``'s drift; 1 is
an error, such as an unreachable broker)."""


def _table(
    title: str,
    entities: Sequence[QuotaEntity],
    actual: Mapping[QuotaEntity, Mapping[QuotaKey, float]],
    changes: Sequence[QuotaChange],
) -> Table:
    from edgestream.topics.quotas import QuotaKey, shown

    wanted = {(c.entity, c.key): c.wanted for c in changes}
    table = Table(title=title, title_justify="left")
    table.add_column("principal")
    for heading in ("produce", "fetch", "broker time"):
        table.add_column(heading, justify="right")
    for entity in entities:
        cells = []
        for key in QuotaKey:
            have = actual.get(entity, {}).get(key)
            if (entity, key) in wanted:
                cells.append(f"[red]{shown(key, have)}[/red] (policy {shown(key, wanted[entity, key])})")
            else:
                cells.append(f"[green]{shown(key, have)}[/green]")
        table.add_row(f"User:{entity.user}", *cells)
    return table


def _quotas(
    producer_byte_rate: float | None,
    consumer_byte_rate: float | None,
    request_percentage: float | None,
    unlimited: bool,
) -> DeviceQuotas:
    from pydantic import ValidationError

    from edgestream.topics.quotas import DeviceQuotas

    given: dict[str, float | None] = {
        "producer_byte_rate": producer_byte_rate,
        "consumer_byte_rate": consumer_byte_rate,
        "request_percentage": request_percentage,
    }
    if unlimited:
        if any(value is not None for value in given.values()):
            _fail("--unlimited removes every quota: leave out the rates")
        return DeviceQuotas.none()
    try:
        chosen: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
        return DeviceQuotas(**chosen)  # what is not given comes from the environment
    except ValidationError as e:
        _fail(f"bad quota settings: {e}")


@app.command()
def quotas(
    region: Annotated[
        list[str] | None,
        typer.Option(
            "--region",
            "-r",
            help="Region whose device principal to manage; repeat for several. Default: the default regions.",
            show_default=False,
        ),
    ] = None,
    producer_byte_rate: Annotated[
        int | None,
        typer.Option(
            help="Bytes/s a region's devices may produce together "
            "[default: EDGESTREAM_DEVICE_QUOTA_PRODUCER_BYTE_RATE, else 4 MiB/s].",
            show_default=False,
        ),
    ] = None,
    consumer_byte_rate: Annotated[
        int | None,
        typer.Option(
            help="Bytes/s a region's devices may fetch together "
            "[default: EDGESTREAM_DEVICE_QUOTA_CONSUMER_BYTE_RATE, else none].",
            show_default=False,
        ),
    ] = None,
    request_percentage: Annotated[
        float | None,
        typer.Option(
            help="Percent of one broker thread's time a region's devices' requests may use together "
            "[default: EDGESTREAM_DEVICE_QUOTA_REQUEST_PERCENTAGE, else none].",
            show_default=False,
        ),
    ] = None,
    unlimited: Annotated[
        bool, typer.Option("--unlimited", help="Remove the device principals' quotas (no quota of any kind).")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Change nothing: show the quotas and exit 1 if they differ from the policy."
        ),
    ] = False,
    bootstrap: Bootstrap = None,
    timeout_ms: TimeoutMs = None,
) -> None:
    """Give each region's device principal (User:device-<region>, every Kafka-native device of the region
    together) the policy's client quotas: produce and fetch byte rates and a share of broker thread time.

    Past a quota the broker delays its answers to the region's devices, so one flooding device costs the
    broker and the region's edge worker no more than the quota (and slows its own region's Kafka-native
    devices, which share it). Devices behind a gateway are not counted: the gateway bounds each one. A
    value set to `none` in the environment removes that kind. Needs ALTER_CONFIGS on the cluster (a super
    user such as admin).
    """
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.settings import DEFAULT_REGIONS
    from edgestream.topics.admin import DEFAULT_TIMEOUT_MS
    from edgestream.topics.quota_admin import apply_quotas, check_quotas
    from edgestream.topics.quotas import entities

    regions = list(dict.fromkeys(region or [r.name for r in DEFAULT_REGIONS]))
    limits = _quotas(producer_byte_rate, consumer_byte_rate, request_percentage, unlimited)
    address = _bootstrap(bootstrap)
    timeout = timeout_ms or DEFAULT_TIMEOUT_MS
    try:
        managed = entities(regions)
        if check:
            actual, changes = asyncio.run(check_quotas(address, regions, limits, timeout_ms=timeout))
        else:
            changes = asyncio.run(apply_quotas(address, regions, limits, timeout_ms=timeout))
    except EdgestreamError as e:
        _fail(str(e))
    if not check:
        for change in changes:
            verb = "[yellow]removed[/yellow]" if change.wanted is None else "[green]set[/green]"
            _out.print(f"{verb} {change}", highlight=False)
        _out.print(f"{len(changes)} quota value(s) changed, for {', '.join(regions)}.", highlight=False)
        return
    _out.print(_table(f"Device quotas on {_where(address)}", managed, actual, changes))
    if not changes:
        _out.print(f"The quotas of {len(managed)} device principal(s) match the policy.")
        return
    _err.print(
        f"[red]{len(changes)} value(s) differ[/red]: `edgestream topics quotas` sets them", highlight=False
    )
    raise typer.Exit(EXIT_QUOTAS_DIFFER)
