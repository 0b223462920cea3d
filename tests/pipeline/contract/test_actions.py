"""The per-reason action table (``pipeline/contract/actions.py``, contract section 9): one row for
exactly the reasons a worker can dead-letter, the same reasons as section 9's table of checks, and the
document's table is the code's."""

from __future__ import annotations

import re
from pathlib import Path

import edgestream.workers.edge.worker  # noqa: F401  (imports every error class a worker raises)
from edgestream.pipeline.contract.actions import (
    ACTION_LABELS,
    DEVICE_ACTIONS,
    GATEWAY_ACTIONS,
    UNKNOWN_REASON_ACTION,
    device_action,
)
from edgestream.pipeline.contract.gatewayframes import REFUSAL_REASONS, REJECTION_REASONS
from edgestream.pipeline.errors import (
    ContractError,
    EdgestreamError,
    InferenceFailed,
    NonFiniteOutput,
    RecordFailed,
    UndecodableRecord,
)

DOC = (Path(__file__).resolve().parents[3] / "docs" / "contract.md").read_text(encoding="utf-8")


def _subclasses(cls: type[EdgestreamError]) -> set[type[EdgestreamError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def _dead_letter_reasons() -> set[str]:
    """What a worker can write as a dead letter's reason: every contract error a record can cause
    (``UndecodableRecord`` is a backend reading results, never a dead letter), the inference errors,
    and ``internal`` (`RecordFailed` and its subclasses)."""
    contract = _subclasses(ContractError) - {UndecodableRecord}
    others: set[type[EdgestreamError]] = {InferenceFailed, NonFiniteOutput, RecordFailed}
    others |= _subclasses(RecordFailed)
    return {cls.reason for cls in contract | others}


def _section(number: int) -> str:
    match = re.search(rf"^## {number}\. .*?(?=^## )", DOC, re.DOTALL | re.MULTILINE)
    assert match is not None, f"docs/contract.md lost section {number}"
    return match.group(0)


def _block(name: str) -> str:
    match = re.search(f"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", DOC, re.DOTALL)
    assert match is not None, f"docs/contract.md lost its {name} table"
    return match.group(1)


def test_every_reason_a_worker_can_dead_letter_has_exactly_one_row() -> None:
    assert set(DEVICE_ACTIONS) == _dead_letter_reasons()


def test_the_rows_are_the_reasons_of_section_9s_table_of_checks() -> None:
    checks = _section(9).split("\n\n")[2]  # the table of checks, after two paragraphs
    assert checks.startswith("| order | check | reason |")
    reasons = [
        code for row in checks.splitlines()[2:] for code in re.findall(r"`([a-z_]+)`", row.split(" | ")[2])
    ]
    assert list(dict.fromkeys(reasons)) == list(DEVICE_ACTIONS)  # the same reasons, in the same order


def test_the_documents_table_is_the_codes() -> None:
    rows = [
        f"| `{reason}` | {ACTION_LABELS[row.action]} | {'yes' if row.resend else 'no'} | {row.advice} |"
        for reason, row in DEVICE_ACTIONS.items()
    ]
    header = "| reason | action | resend the same envelope? | why, and what to do |\n|---|---|---|---|\n"
    assert _block("reason-actions") == header + "\n".join(rows) + "\n"


def test_only_a_refusal_that_leaves_no_trace_may_be_resent() -> None:
    # rate_limited is checked before the request id is remembered; every other refusal either repeats
    # (the same bytes are refused the same way) or spent the request id (inference, output).
    assert [reason for reason, row in DEVICE_ACTIONS.items() if row.resend] == ["rate_limited"]


def test_an_unknown_reason_backs_off_without_resending() -> None:
    assert device_action("from_a_newer_edge") is UNKNOWN_REASON_ACTION
    assert (UNKNOWN_REASON_ACTION.action, UNKNOWN_REASON_ACTION.resend) == ("back_off", False)
    assert device_action("stale").action == "correct_clock"


def test_every_gateway_refusal_and_rejection_has_one_row_and_the_document_shows_it() -> None:
    assert set(GATEWAY_ACTIONS) == set(REFUSAL_REASONS) | set(REJECTION_REASONS)
    for reason in set(GATEWAY_ACTIONS) & set(DEVICE_ACTIONS):  # one code, one action everywhere
        assert GATEWAY_ACTIONS[reason] == DEVICE_ACTIONS[reason]
    assert device_action("unknown_device").action == "reprovision_key"
    assert [r for r, row in GATEWAY_ACTIONS.items() if row.resend] == ["rate_limited", "unavailable"]
    rows = [
        f"| `{reason}` | {ACTION_LABELS[row.action]} | {'yes' if row.resend else 'no'} | {row.advice} |"
        for reason, row in GATEWAY_ACTIONS.items()
    ]
    header = "| reason | action | resend the same envelope? | why, and what to do |\n|---|---|---|---|\n"
    assert _block("gateway-actions") == header + "\n".join(rows) + "\n"
