"""The one command line, ``edgestream``: a typer app that mounts one group per module.

Heavy imports (onnxruntime, scikit-learn, aiokafka) happen inside the commands, so ``edgestream --help``
stays fast.
"""

from __future__ import annotations

import logging

import typer

from edgestream.commands import (
    aggregate,
    audit,
    broker,
    certs,
    devices,
    dlq,
    gateway,
    k8s,
    keys,
    models,
    quotas,  # registers `topics quotas` on topics.app
    registry,
    retrain,
    rollout,
    run,
    sla,
    topics,
)

app = typer.Typer(
    name="edgestream",
    help="Event-streaming inference at the edge: devices -> Kafka -> onnxruntime -> results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(broker.app, name="broker")
app.add_typer(topics.app, name="topics")
assert quotas.quotas is not None  # its module adds `topics quotas`
app.add_typer(models.app, name="models")
app.add_typer(dlq.app, name="dlq")
app.add_typer(k8s.app, name="k8s")
app.add_typer(audit.app, name="audit")
app.add_typer(certs.app, name="certs")
app.add_typer(keys.app, name="keys")
app.add_typer(devices.app, name="devices")
app.add_typer(registry.app, name="registry")
app.add_typer(rollout.app, name="rollout")
app.add_typer(retrain.app, name="retrain")
app.add_typer(aggregate.app, name="aggregate")
app.add_typer(sla.app, name="sla")
app.add_typer(gateway.app, name="gateway")
run.register(app)


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log edgestream at DEBUG (default INFO); libraries stay at WARNING."
    ),
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgestream").setLevel(logging.DEBUG if verbose else logging.INFO)


def main() -> None:
    """Console-script entry point. A process started by another edgestream process (a demo's or a
    bench's worker) exits with it."""
    import os

    from edgestream.pipeline import heap
    from edgestream.workers.local.processes import exit_with_parent

    exit_with_parent(os.environ)
    heap.enable()
    app()
