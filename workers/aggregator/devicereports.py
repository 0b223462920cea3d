"""Device reports in the aggregator: agreement between late edge answers and the devices' fallback
answers, per (region, model, edge version, fallback version), and disagreements as labelling
candidates.

Devices report through their region's gateway to ``edge.<region>.reports`` (keyed by device id,
``pipeline/contract/devicereports.py``). The agent adds each report's agreement rows to the
``device-agreement`` table (redelivered offsets skipped, as for summaries: ``windows.seen``) and
appends each disagreement, once per request id it has seen recently, as one JSON line to
``<home>/aggregator/labelling-candidates.jsonl`` (request id, region, device, model, both versions,
both answers; never an input), the file a labelling tool reads; a label written back to
``cloud.labels`` then joins like any other. A report that does not decode is counted by reason and
logged (``malformed``); it never stops the agent. The view is ``GET /device-agreement``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any, Final

from edgestream.pipeline.contract.devicereports import DeviceReport
from edgestream.pipeline.errors import ContractError
from edgestream.topics.catalogue import reports_topic
from edgestream.workers.aggregator import windows as w

if TYPE_CHECKING:
    from pathlib import Path

    import faust

log = logging.getLogger(__name__)

AGREEMENT_PATH: Final = "/device-agreement"
"""Where the agreement view answers."""
CANDIDATES_FILE: Final = "labelling-candidates.jsonl"
"""Labelling candidates, one JSON object a line, in the aggregator's data directory."""
_RECENT_CANDIDATES: Final = 65_536
"""Request ids remembered to write each candidate once across redeliveries (best effort)."""
MAX_AGREEMENT_ROWS: Final = 10_000
"""Distinct (region, model, versions) rows the table keeps; a report's rows past it are counted in
``malformed`` as ``too_many_rows`` and dropped. A report names its models and versions itself, so
without it every new name a device (or a forger of its gateway session) made up was a row kept forever
(found by the hostile-input audit, 2026-12-07)."""
MAX_CANDIDATES_BYTES: Final = 64 * 1024 * 1024
"""Largest the candidates file grows; past it the file is moved to ``<name>.1`` (replacing the one
before) and a new one is started."""


def agreement_key(region: str, model: str, edge_version: int, fallback_version: int) -> str:
    """The table key of one agreement row."""
    return f"{region}|{model}|{edge_version}|{fallback_version}"


class ReportSink:
    """What the agent does with a decoded report (pure apart from the candidates file)."""

    def __init__(
        self, candidates_path: Path, max_bytes: int = MAX_CANDIDATES_BYTES, max_rows: int = MAX_AGREEMENT_ROWS
    ) -> None:
        self._path = candidates_path
        self._max_bytes = max_bytes
        self._max_rows = max_rows
        self._recent: OrderedDict[bytes, None] = OrderedDict()
        self.malformed: Counter[str] = Counter()
        """Reports that did not decode, by reason."""

    def decode(self, value: Any, where: str) -> DeviceReport | None:
        """The report in ``value``, or None (counted by reason, logged) when it is not one."""
        try:
            return DeviceReport.from_bytes(value if type(value) is bytes else b"")
        except ContractError as e:
            self.malformed[e.reason] += 1
            log.warning("skipping a device report at %s: %s", where, e)
            return None

    def has_room(self, table: Any, key: str) -> bool:
        """Whether ``key`` is a row of ``table`` or may become one (`MAX_AGREEMENT_ROWS`); a row past
        it is counted as ``too_many_rows``."""
        if key in table or len(table) < self._max_rows:
            return True
        self.malformed["too_many_rows"] += 1
        return False

    @staticmethod
    def add(state: w.State, agree: int, disagree: int) -> w.State:
        """Add one row's counts to its table value."""
        state["agree"] = state.get("agree", 0) + agree
        state["disagree"] = state.get("disagree", 0) + disagree
        return state

    def candidates(self, report: DeviceReport, region: str, device: str) -> list[dict[str, Any]]:
        """The labelling candidates of ``report`` not written recently."""
        out = []
        for c in report.candidates:
            if c.request_id in self._recent:
                continue
            self._recent[c.request_id] = None
            while len(self._recent) > _RECENT_CANDIDATES:
                self._recent.popitem(last=False)
            out.append(
                {
                    "rid": c.request_id.hex(),
                    "region": region,
                    "device": device,
                    "model": c.model,
                    "edge_version": c.edge_version,
                    "fallback_version": c.fallback_version,
                    "edge": {"label": c.edge_label, "score": c.edge_score},
                    "fallback": {"label": c.fallback_label, "score": c.fallback_score},
                    "reported_at_ms": report.at_ms,
                }
            )
        return out

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append candidates to the file (one JSON line each)."""
        if not rows:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.exists() and self._path.stat().st_size >= self._max_bytes:
            self._path.replace(self._path.with_name(self._path.name + ".1"))
        with self._path.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def add_report_agent(app: faust.App, regions: list[str], datadir: Path, partitions: int) -> ReportSink:
    """The agent over every region's reports topic, its table (``partitions``: the reports topics'
    count, as faust updates a table in the partition of the event) and its view; returns the sink."""
    table = app.Table("device-agreement", partitions=partitions, key_type=str)
    sink = ReportSink(datadir / CANDIDATES_FILE)
    topic = app.topic(
        *(reports_topic(r) for r in regions),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    def count(event: Any, report: DeviceReport) -> None:
        message = event.message
        region = message.topic.split(".")[1] if message.topic.count(".") >= 2 else "?"
        device = (event.key or b"").decode(errors="replace")[:128]
        # A report may name one (model, versions) in several rows: added up first, since a table value
        # applies each record once (`windows.seen`) and a second row was dropped unseen.
        totals: dict[str, tuple[int, int]] = {}
        for row in report.agreement:
            key = agreement_key(region, row.model, row.edge_version, row.fallback_version)
            agree, disagree = totals.get(key, (0, 0))
            totals[key] = (agree + row.agree, disagree + row.disagree)
        for key, (agree, disagree) in totals.items():
            if not sink.has_room(table, key):
                continue
            state = table.get(key) or {}
            if not w.seen(state, message.topic, message.partition, message.offset):
                table[key] = sink.add(state, agree, disagree)
        sink.write(sink.candidates(report, region, device))

    @app.agent(topic)
    async def count_reports(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            where = f"{message.topic}:{message.partition}@{message.offset}"
            report = sink.decode(event.value, where)
            if report is None:
                continue
            try:
                count(event, report)
            except Exception:  # one report's failure, whatever it is, stays that report's
                log.exception("skipping the device report at %s: applying it failed", where)

    @app.page(AGREEMENT_PATH)
    async def view(web: Any, request: Any) -> Any:
        del request
        return web.json({"rows": agreement_rows(dict(table.items())), "malformed": dict(sink.malformed)})

    del count_reports, view
    return sink


def agreement_rows(table: dict[str, w.State]) -> list[dict[str, Any]]:
    """The view: one row per (region, model, edge version, fallback version), with its agreement rate."""
    rows = []
    for key in sorted(table):
        region, rest = key.split("|", 1)
        model, edge_version, fallback_version = rest.rsplit("|", 2)
        agree, disagree = table[key].get("agree", 0), table[key].get("disagree", 0)
        rows.append(
            {
                "region": region,
                "model": model,
                "edge_version": int(edge_version),
                "fallback_version": int(fallback_version),
                "agree": agree,
                "disagree": disagree,
                "agreement": agree / (agree + disagree) if agree + disagree else None,
            }
        )
    return rows
