"""``edgestream k8s ...``: Kubernetes resources from the catalogue and the ACL policy.

``generate`` writes the Helm chart's catalogue (``deploy/helm/edgestream/catalogue.yaml``: per region its
users, consumer group and ingest partitions, and every Strimzi KafkaTopic and KafkaUser; ``--check``
only says whether the file differs); ``strimzi`` prints the KafkaTopic and KafkaUser resources alone,
labelled for a Strimzi cluster, for ``kubectl apply -f -``. Both come from ``topics/strimzi.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgestream.commands.common import fail
from edgestream.pipeline.errors import EdgestreamError

app = typer.Typer(
    help="Kubernetes: the chart's catalogue, Strimzi KafkaTopic and KafkaUser resources.",
    no_args_is_help=True,
)

Regions = Annotated[
    list[str] | None,
    typer.Option(
        "--region",
        "-r",
        help="Region to include; repeat for several. Default: the default regions.",
        show_default=False,
    ),
]
Replicas = Annotated[int, typer.Option("--replicas", min=1, help="Replicas per partition.")]
MinInsync = Annotated[
    int | None,
    typer.Option(
        "--min-insync-replicas",
        min=1,
        help="Topic min.insync.replicas [default: replicas - 1, at least 1].",
        show_default=False,
    ),
]


def _regions(option: list[str] | None) -> list[str]:
    from edgestream.pipeline.settings import DEFAULT_REGIONS

    return list(dict.fromkeys(option or [r.name for r in DEFAULT_REGIONS]))


@app.command()
def generate(
    region: Regions = None,
    replicas: Replicas = 3,
    min_insync_replicas: MinInsync = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="File to write [default: the chart's catalogue.yaml].")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if the file differs.")
    ] = False,
) -> None:
    """Write the chart's catalogue: users, groups and partitions per region, KafkaTopics, KafkaUsers."""
    from edgestream.topics.strimzi import CHART_CATALOGUE, catalogue_text

    path = out or CHART_CATALOGUE
    try:
        text = catalogue_text(_regions(region), replicas, min_insync_replicas)
    except EdgestreamError as e:
        fail(str(e))
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if check:
        if current != text:
            fail(f"{path} is out of date (run `edgestream k8s generate`)")
        typer.echo(f"{path} is up to date")
        return
    if current == text:
        typer.echo(f"{path}: nothing changed")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {path}")


@app.command()
def strimzi(
    region: Regions = None,
    cluster: Annotated[
        str, typer.Option("--cluster", help="The Strimzi Kafka resource the topics and users belong to.")
    ] = "edgestream",
    replicas: Replicas = 3,
    min_insync_replicas: MinInsync = None,
    out: Annotated[Path | None, typer.Option("--out", help="File to write [default: stdout].")] = None,
) -> None:
    """Print every KafkaTopic and KafkaUser (kafka.strimzi.io/v1beta2) of the regions as YAML."""
    from edgestream.topics.strimzi import manifests_text

    try:
        text = manifests_text(_regions(region), cluster, replicas, min_insync_replicas)
    except EdgestreamError as e:
        fail(str(e))
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}", err=True)
