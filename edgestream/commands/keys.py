"""`edgestream keys ...`: the region master key file: create, rotate, retire, status."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from edgestream.commands.common import utc
from edgestream.pipeline.settings import DEFAULT_HOME

if TYPE_CHECKING:
    from edgestream.pipeline.security.keyring import KeyRing, KeyStatus

app = typer.Typer(
    help="Region master keys: create the key file, rotate with an acceptance window, retire, status.",
    no_args_is_help=True,
)

EXIT_ERROR = 1
DEFAULT_REGIONS = ("eu-west", "us-east", "ap-south")
DEFAULT_KEY_FILE = DEFAULT_HOME / "keys.json"

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


def parse_duration_ms(text: str) -> int:
    """``90s``, ``10m``, ``2h``, ``1d``, ``500ms`` (or ``0``) as milliseconds. Raises BadParameter."""
    text = text.strip()
    if text == "0":
        return 0
    match = _DURATION.fullmatch(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 10m, 2h or 1d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


KeyFile = Annotated[
    Path,
    typer.Option("--path", help="The key file (JSON, mode 0600).", dir_okay=False),
]
Region = Annotated[str, typer.Option("--region", help="The region whose key to change.", show_default=False)]


def _fail(message: str) -> NoReturn:
    _err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(EXIT_ERROR)


def _time(ms: int | None) -> str:
    return utc(ms)


def _state(row: KeyStatus) -> str:
    if row.state == "accepted":
        return f"accepted until {_time(row.until_ms)}"
    if row.state == "expired":
        return f"refused since {_time(row.until_ms)} (key still in the file: retire it)"
    if row.state == "retired" and row.until_ms is not None:
        return f"retired {_time(row.until_ms)}"
    return row.state


@app.command()
def init(
    path: KeyFile = DEFAULT_KEY_FILE,
    region: Annotated[
        list[str] | None,
        typer.Option(help=f"Region to make keys for (repeat) [default: {', '.join(DEFAULT_REGIONS)}]."),
    ] = None,
) -> None:
    """Create the key file with one master key per region (refuses to overwrite an existing one)."""
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security import keyfile

    if path.exists():
        _err.print(f"{path} exists; leaving it alone")
        raise typer.Exit(EXIT_ERROR)
    try:
        ring = keyfile.create(path, region or list(DEFAULT_REGIONS))
    except ConfigError as e:
        _fail(str(e))
    _out.print(f"wrote master keys for {', '.join(ring.regions)} to {path}")


@app.command()
def rotate(
    region: Region,
    window: Annotated[
        str,
        typer.Option(
            "--window",
            help="How long the previous key id stays accepted: 90s, 10m, 2h, 1d (0: refuse it now).",
            show_default=False,
        ),
    ],
    path: KeyFile = DEFAULT_KEY_FILE,
) -> None:
    """Make a new master key current in REGION; the previous key id is accepted for the window."""
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security import keyfile

    window_ms = parse_duration_ms(window)
    try:
        ring = keyfile.rotate(path, region, window_ms)
    except ConfigError as e:
        _fail(str(e))
    new_id = ring.current_key_id(region)
    _out.print(f"{region}: key {new_id} is current; devices must be provisioned with it")
    _print_others(ring, region, new_id)


@app.command()
def retire(
    region: Region,
    key_id: Annotated[int, typer.Argument(help="The key id to retire.", min=0, show_default=False)],
    path: KeyFile = DEFAULT_KEY_FILE,
) -> None:
    """Retire KEY_ID of REGION now: its bytes leave the file, envelopes under it fail as retired_key."""
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security import keyfile

    try:
        ring = keyfile.retire(path, region, key_id)
    except ConfigError as e:
        _fail(str(e))
    _out.print(f"{region}: key {key_id} is retired")
    _print_others(ring, region, key_id)


def _print_others(ring: KeyRing, region: str, shown: int) -> None:
    for row in ring.status():
        if row.region == region and row.key_id != shown and row.state != "current":
            _out.print(f"{region}: key {row.key_id} {_state(row)}")


@app.command()
def status(path: KeyFile = DEFAULT_KEY_FILE) -> None:
    """Every key id of every region: current, accepted until when, retired; and when it was made."""
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security import keyfile

    try:
        rows = keyfile.status(path)
    except ConfigError as e:
        _fail(str(e))
    table = Table(title=f"master keys in {path}", title_justify="left")
    for col in ("region", "key id", "state", "created"):
        table.add_column(col, justify="right" if col == "key id" else "left")
    for row in rows:
        style = "bold" if row.state == "current" else "dim" if row.state in ("retired", "expired") else None
        table.add_row(row.region, str(row.key_id), _state(row), _time(row.created_at_ms), style=style)
    _out.print(table)
