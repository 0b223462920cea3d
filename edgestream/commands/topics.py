"""`edgestream topics ...`: create the catalogue's topics, list them, describe them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edgestream.pipeline.security.identities import Identity
    from edgestream.pipeline.settings import KafkaSettings
    from edgestream.topics.acls import AclDiff, AclRule
    from edgestream.topics.admin import TopicDescription
    from edgestream.topics.errors import TopicConfigMismatch

app = typer.Typer(help="Create, list and describe the catalogue's Kafka topics.", no_args_is_help=True)

BOOTSTRAP_ENV = "EDGESTREAM_KAFKA_BOOTSTRAP"
EXIT_ERROR = 1
EXIT_MISMATCH = 2

_out = Console()
_err = Console(stderr=True)

Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        "-b",
        envvar=BOOTSTRAP_ENV,
        help="Broker HOST:PORT. Default: the local broker's state file (edgestream broker start).",
        show_default=False,
    ),
]
TimeoutMs = Annotated[
    int | None,
    typer.Option(
        "--timeout-ms", min=1, help="Bound on each broker request [default: 30000].", show_default=False
    ),
]


def resolve_kafka(option: str | None, identity: Identity | None = None) -> KafkaSettings:
    """Where an operator command connects: ``--bootstrap`` (that cluster; over TLS when
    ``EDGESTREAM_KAFKA_SECURITY_PROTOCOL=SSL`` and ``EDGESTREAM_KAFKA_SSL_{CA,CERT,KEY}_FILE`` say so),
    else the local broker (``edgestream broker start``) as ``identity`` (default ``admin``) over TLS."""
    from edgestream.workers.local.broker.process import local_kafka

    if option:
        # Another cluster: TLS files (and the protocol) come from EDGESTREAM_KAFKA_SSL_* settings.
        from edgestream.pipeline.settings import KafkaEnv

        return KafkaEnv().settings(option)
    kafka = local_kafka(identity)
    if kafka is None:
        _fail(
            f"no broker address: pass --bootstrap, set {BOOTSTRAP_ENV}, or start the local broker "
            "(edgestream broker start)"
        )
    return kafka


def _bootstrap(option: str | None) -> KafkaSettings:
    return resolve_kafka(option)


def _given(**options: int | None) -> dict[str, int]:
    """The options the user gave; the rest keep the admin module's defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    _err.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _human_ms(value: str | int | None) -> str:
    """``86400000`` -> ``1 d``; ``-1`` or None -> ``forever``; anything else as given."""
    try:
        ms = int(value) if value is not None else -1
    except ValueError:
        return str(value)
    if ms < 0:
        return "forever"
    for unit_ms, unit in ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s")):
        if ms >= unit_ms and ms % unit_ms == 0:
            return f"{ms // unit_ms} {unit}"
    return f"{ms} ms"


def _print_mismatch(error: TopicConfigMismatch) -> NoReturn:
    table = Table(title="Existing topics that differ from the catalogue", title_justify="left")
    for column in ("topic", "setting", "catalogue", "broker"):
        table.add_column(column)
    for d in error.differences:
        table.add_row(d.topic, d.setting, d.expected, f"[red]{d.actual}[/red]")
    _err.print(table)
    _fail(
        "nothing was created; edgestream never alters existing topics: fix or delete the topics above "
        "(or point --bootstrap at the right cluster)",
        EXIT_MISMATCH,
    )


@app.command()
def create(
    region: Annotated[
        list[str] | None,
        typer.Option(
            "--region",
            "-r",
            help="Region to create topics for; repeat for several. Default: the default regions.",
            show_default=False,
        ),
    ] = None,
    bootstrap: Bootstrap = None,
    replication_factor: Annotated[
        int | None,
        typer.Option(
            "--replication-factor",
            min=1,
            help="Replicas per partition [default: 3 on a cluster of three or more brokers, 1 on one; "
            "min.insync.replicas is one less].",
            show_default=False,
        ),
    ] = None,
    timeout_ms: TimeoutMs = None,
) -> None:
    """Create the catalogue's topics for the regions, plus the cloud and control topics (idempotent).

    Exits 2, naming every difference, when an existing topic's partitions or configs differ.
    """
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.settings import DEFAULT_REGIONS
    from edgestream.topics.admin import ensure_topics
    from edgestream.topics.catalogue import all_topics
    from edgestream.topics.errors import TopicConfigMismatch

    regions = region or [r.name for r in DEFAULT_REGIONS]
    try:
        topics = all_topics(regions)
        report = asyncio.run(
            ensure_topics(
                _bootstrap(bootstrap),
                topics,
                **_given(replication_factor=replication_factor, timeout_ms=timeout_ms),
            )
        )
    except TopicConfigMismatch as e:
        _print_mismatch(e)
    except EdgestreamError as e:
        _fail(str(e))
    created = set(report.created)
    table = Table(title=f"Topics for {', '.join(dict.fromkeys(regions))}", title_justify="left")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("retention", justify="right")
    table.add_column("cleanup")
    table.add_column("status")
    for topic in topics:
        status = "[green]created[/green]" if topic.name in created else "exists"
        spec = topic.spec
        table.add_row(
            topic.name, str(spec.partitions), _human_ms(spec.retention_ms), spec.cleanup_policy, status
        )
    _out.print(table)
    _out.print(f"{len(report.created)} created, {len(report.existing)} already there and matching.")


def _describe(
    bootstrap: KafkaSettings, names: Sequence[str], timeout_ms: int | None
) -> list[TopicDescription]:
    from edgestream.topics.admin import describe_topics

    return asyncio.run(describe_topics(bootstrap, names, **_given(timeout_ms=timeout_ms)))


@app.command("list")
def list_(
    bootstrap: Bootstrap = None,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Also show topics outside the catalogue.")
    ] = False,
    timeout_ms: TimeoutMs = None,
) -> None:
    """List the cluster's catalogue topics with their partitions, retention and whether they match."""
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.topics.admin import list_topics
    from edgestream.topics.catalogue import CLEANUP_POLICY, RETENTION_MS, is_catalogue_topic

    address = _bootstrap(bootstrap)
    try:
        names = asyncio.run(list_topics(address, include_foreign=all_, **_given(timeout_ms=timeout_ms)))
        ours = [name for name in names if is_catalogue_topic(name)]
        described = {d.name: d for d in _describe(address, ours, timeout_ms)} if ours else {}
    except EdgestreamError as e:
        _fail(str(e))
    table = Table(title=f"Topics on {address}", title_justify="left")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("retention", justify="right")
    table.add_column("cleanup")
    table.add_column("catalogue")
    for name in names:
        d = described.get(name)
        if d is None:
            table.add_row(name, "", "", "", "[dim]not in catalogue[/dim]")
            continue
        state = "[red]differs[/red]" if d.differences() else "[green]matches[/green]"
        table.add_row(
            name,
            str(d.partitions),
            _human_ms(d.configs.get(RETENTION_MS)),
            d.configs.get(CLEANUP_POLICY, ""),
            state,
        )
    _out.print(table)


def _description_table(d: TopicDescription) -> Table:
    spec = d.topic.spec
    differing = {diff.setting for diff in d.differences()}
    table = Table(title=d.name, title_justify="left")
    table.add_column("setting")
    table.add_column("broker")
    table.add_column("catalogue")
    rows = [("partitions", str(d.partitions), str(spec.partitions))]
    rows += [(key, d.configs.get(key, ""), expected) for key, expected in spec.topic_configs().items()]
    for setting, broker, catalogue in rows:
        table.add_row(setting, f"[red]{broker}[/red]" if setting in differing else broker, catalogue)
    table.add_row("replication factor", str(d.replication_factor), "")
    for setting, catalogue in (("scope", spec.scope), ("key", spec.key), ("value", spec.value)):
        table.add_row(setting, "", catalogue)
    table.add_row("notes", "", spec.notes)
    return table


@app.command()
def describe(
    names: Annotated[list[str], typer.Argument(metavar="NAME", help="Topic names.", show_default=False)],
    bootstrap: Bootstrap = None,
    timeout_ms: TimeoutMs = None,
) -> None:
    """Describe topics: the broker's partitions and configs beside the catalogue's."""
    from edgestream.pipeline.errors import EdgestreamError

    try:
        descriptions = _describe(_bootstrap(bootstrap), names, timeout_ms)
    except EdgestreamError as e:
        _fail(str(e))
    for d in descriptions:
        _out.print(_description_table(d))
    if any(d.differences() for d in descriptions):
        _err.print("[red]some settings differ from the catalogue (in red)[/red]")


# -- ACLs --------------------------------------------------------------------------------------------

EXIT_ACLS_DIFFER = 1
"""``acl --check``: the broker's bindings differ from the policy."""


def _acl_resource(rule: AclRule) -> str:
    """``topic edge.eu-west.results``; a prefixed pattern ends in ``*``."""
    from edgestream.topics.acls import PatternType

    star = "*" if rule.pattern_type is PatternType.PREFIXED else ""
    return f"{rule.resource_type.name.lower().replace('_', '-')} {rule.resource_name}{star}"


def _acl_changes_table(title: str, changes: Sequence[tuple[str, AclRule]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("change", "principal", "resource", "operation", "permission"):
        table.add_column(column)
    for change, rule in changes:
        principal = rule.principal if rule.host == "*" else f"{rule.principal} from {rule.host}"
        table.add_row(change, principal, _acl_resource(rule), rule.operation.name, rule.permission.name)
    return table


def _acl_matrix(title: str, actual: Sequence[AclRule], diff: AclDiff, managed: set[str]) -> Table:
    """Principal x resource x operation as the broker has it, with the policy's missing cells added."""
    from edgestream.topics.acls import Permission

    extra, missing = set(diff.extra), set(diff.missing)
    cells: dict[tuple[str, str], dict[str, list[str]]] = {}
    for rule in sorted({*actual, *missing}):
        principal = rule.principal if rule.host == "*" else f"{rule.principal} from {rule.host}"
        verb = "✓" if rule.permission is Permission.ALLOW else rule.permission.name.lower()
        if rule in missing:
            text = "[yellow]missing[/yellow]"
        elif rule in extra:
            text = f"[red]{verb} extra[/red]"
        elif rule.principal in managed:
            text = f"[green]{verb}[/green]"
        else:
            text = f"[dim]{verb}[/dim]"
        row = cells.setdefault((principal, _acl_resource(rule)), {})
        row.setdefault(rule.operation.name, []).append(text)
    operations = sorted({op for row in cells.values() for op in row}, key=_operation_order)
    table = Table(title=title, title_justify="left")
    table.add_column("principal")
    table.add_column("resource")
    for op in operations:
        table.add_column(op, justify="center")
    for (principal, resource), row in cells.items():
        shown = principal if principal.split(" ")[0] in managed else f"[dim]{principal} (not managed)[/dim]"
        table.add_row(shown, resource, *(" ".join(row.get(op, [])) for op in operations))
    return table


def _where(kafka: KafkaSettings) -> str:
    """The bootstrap address, for titles."""

    return kafka.bootstrap_servers


def _operation_order(name: str) -> int:
    from edgestream.topics.acls import Operation

    return int(Operation[name])


@app.command()
def acl(
    region: Annotated[
        list[str] | None,
        typer.Option(
            "--region",
            "-r",
            help="Region whose principals to manage; repeat for several. Default: the default regions.",
            show_default=False,
        ),
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Also delete bindings of the managed principals that the policy does not list.",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Change nothing: show the broker's bindings as a matrix and exit 1 if they differ "
            "from the policy.",
        ),
    ] = False,
    bootstrap: Bootstrap = None,
    timeout_ms: TimeoutMs = None,
) -> None:
    """Create the ACLs the catalogue's policy gives edgestream's principals for the regions (idempotent).

    Principals: edge-<region> (workers), device-<region> (devices), gateway-<region> (device gateways),
    aggregator, and admin (a super user, like broker). The broker needs an authorizer (StandardAuthorizer)
    and a principal allowed to manage ACLs, such as a super user.
    """
    from edgestream.pipeline.settings import DEFAULT_REGIONS

    if check and prune:
        _fail("--check changes nothing; leave out --prune")
    regions = list(dict.fromkeys(region or [r.name for r in DEFAULT_REGIONS]))
    if check:
        _acl_check(_bootstrap(bootstrap), regions, timeout_ms)
    else:
        _acl_apply(_bootstrap(bootstrap), regions, prune, timeout_ms)


def _acl_check(address: KafkaSettings, regions: list[str], timeout_ms: int | None) -> None:
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.topics.acl_admin import check_policy
    from edgestream.topics.acls import principals
    from edgestream.topics.admin import DEFAULT_TIMEOUT_MS

    try:
        managed = set(principals(regions))
        actual, diff = asyncio.run(
            check_policy(address, regions, timeout_ms=timeout_ms or DEFAULT_TIMEOUT_MS)
        )
    except EdgestreamError as e:
        _fail(str(e))
    title = f"ACLs on {_where(address)} (policy for {', '.join(regions)})"
    _out.print(_acl_matrix(title, actual, diff, managed))
    if diff.matches:
        _out.print(f"The broker's bindings for {len(managed)} principal(s) match the policy.")
        return
    changes = [("missing", rule) for rule in diff.missing] + [("extra", rule) for rule in diff.extra]
    _err.print(_acl_changes_table("Differences from the policy", changes))
    fix = "edgestream topics acl" + (" --prune" if diff.extra else "")
    _err.print(
        f"[red]{len(diff.missing)} missing, {len(diff.extra)} extra[/red]: `{fix}` fixes them "
        "(bindings for every principal, User:*, only by hand)",
        highlight=False,
    )
    raise typer.Exit(EXIT_ACLS_DIFFER)


def _acl_apply(address: KafkaSettings, regions: list[str], prune: bool, timeout_ms: int | None) -> None:
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.topics.acl_admin import apply_policy
    from edgestream.topics.admin import DEFAULT_TIMEOUT_MS

    try:
        report = asyncio.run(
            apply_policy(address, regions, prune, timeout_ms=timeout_ms or DEFAULT_TIMEOUT_MS)
        )
    except EdgestreamError as e:
        _fail(str(e))
    changes = [("[green]created[/green]", rule) for rule in report.created]
    changes += [("[red]deleted[/red]", rule) for rule in report.deleted]
    if changes:
        _out.print(_acl_changes_table(f"ACL changes on {_where(address)}", changes))
    _out.print(
        f"{len(report.created)} created, {len(report.deleted)} deleted, "
        f"{len(report.unchanged)} already there, for {', '.join(regions)}.",
        highlight=False,
    )
    if report.left:
        left = [("left", rule) for rule in report.left]
        _err.print(_acl_changes_table("Bindings outside the policy, left in place", left))
        _err.print(
            "[yellow]--prune deletes those of edgestream's principals; bindings for every principal "
            "(User:*) are left to you[/yellow]"
        )
