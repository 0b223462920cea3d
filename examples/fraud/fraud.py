"""Fraud scoring at the edge with your own model: train, export, then stream transactions for decisions.

Two steps around ``edgestream registry publish`` (examples/fraud/README.md has the whole walk):

    python examples/fraud/fraud.py train --out .edgestream/fraud
    edgestream registry publish fraud-scorer --onnx .edgestream/fraud/fraud.onnx \\
        --signature examples/fraud/fraud.yaml
    python examples/fraud/fraud.py stream --data .edgestream/fraud --region eu-west

``train`` makes a synthetic, imbalanced stream of card transactions (scikit-learn's generator, about 1%
fraud), trains a gradient-boosted classifier on the first 70%, exports it with skl2onnx and keeps the
held-out 30% with the offline model's decisions. ``stream`` plays payment terminals: each sends its
held-out transactions, sealed with its own device key, to the local broker as ``device-<region>``,
and reads its decision back on the region's replies topic, sealed to it; then it prints the served model's
precision and recall beside the offline model's on the same transactions, and the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FEATURES = 12
"""Features per transaction (amount, time of day, merchant and card history, ... as numbers)."""
SIGNATURE = Path(__file__).with_name("fraud.yaml")
"""The model's signature, published with it."""


def train(out: Path, transactions: int, seed: int) -> None:
    """Train, export ``fraud.onnx`` and keep the held-out set (``holdout.npz``) in ``out``."""
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import precision_score, recall_score

    X, y = make_classification(
        n_samples=transactions,
        n_features=FEATURES,
        n_informative=8,
        n_redundant=2,
        weights=[0.99],
        flip_y=0.0005,
        class_sep=2.0,
        random_state=seed,
    )
    X = X.astype(np.float32)
    split = int(0.7 * len(X))  # the stream's first 70% trains, the rest is held out
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)
    model.fit(X[:split], y[:split])
    offline = model.predict(X[split:])
    onx = to_onnx(model, X[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fraud.onnx").write_bytes(onx.SerializeToString())
    np.savez(out / "holdout.npz", X=X[split:], y=y[split:], offline=offline)
    print(
        f"trained on {split} transactions ({int(y[:split].sum())} fraud); held out {len(X) - split} "
        f"({int(y[split:].sum())} fraud): offline precision {precision_score(y[split:], offline):.3f}, "
        f"recall {recall_score(y[split:], offline):.3f}\nwrote {out / 'fraud.onnx'} and {out / 'holdout.npz'}"
    )


async def _decisions(
    region: str, model: str, X: npt.NDArray[np.float32], terminals: int, rate_per_s: float, timeout_s: float
) -> tuple[dict[int, Any], float]:
    """Send each row from a terminal, read the replies; row -> result record, and seconds sending."""
    from edgestream.pipeline import kafka
    from edgestream.pipeline.contract.codec import encode_tensor
    from edgestream.pipeline.contract.envelope import new_request_id, seal
    from edgestream.pipeline.contract.reply import ReplyKey, ReplyRefused, open_reply
    from edgestream.pipeline.security import keyfile
    from edgestream.pipeline.security.identities import Identity
    from edgestream.pipeline.settings import DEFAULT_HOME
    from edgestream.topics.catalogue import ingest_topic, parse_topic, replies_topic
    from edgestream.workers.local.broker.process import local_kafka

    settings = local_kafka(Identity.device(region))
    if settings is None:
        raise SystemExit("no local broker runs: start one with `edgestream broker start`")
    keyring = keyfile.load(DEFAULT_HOME / "keys.json")
    key_id = keyring.current_key_id(region)
    topic = replies_topic(region)
    rows: dict[bytes, int] = {}
    answers: dict[int, Any] = {}
    reply_keys = {
        f"terminal-{t:03d}".encode(): ReplyKey(keyring.device_key(region, f"terminal-{t:03d}", key_id))
        for t in range(terminals)
    }
    async with (
        kafka.started(kafka.producer(settings, f"fraud-terminals-{region}")) as producer,
        kafka.started(kafka.consumer(settings, f"fraud-terminals-{region}")) as replies,
    ):
        partitions = kafka.partitions([(topic, parse_topic(topic).spec.partitions)])
        replies.assign(partitions)
        await replies.seek_to_end(*partitions)
        for tp in partitions:
            await replies.position(tp)  # fixed before the first transaction goes
        started = time.monotonic()
        for i, row in enumerate(X):
            terminal = f"terminal-{i % terminals:03d}"
            rid = new_request_id()
            rows[rid] = i
            envelope = seal(
                encode_tensor(row, "float32"),
                device_key=keyring.device_key(region, terminal, key_id),
                device_id=terminal,
                key_id=key_id,
                kind="embedding",
                model=model,
                capture_time_ms=time.time_ns() // 1_000_000,
                request_id=rid,
            )
            await producer.send(ingest_topic(region, "embedding"), envelope, key=terminal.encode())
            await asyncio.sleep(max(0.0, started + (i + 1) / rate_per_s - time.monotonic()))
        sent_s = time.monotonic() - started
        deadline = time.monotonic() + timeout_s
        while len(answers) < len(rows) and time.monotonic() < deadline:
            for records in (await replies.getmany(timeout_ms=200)).values():
                for record in records:
                    reply_key = reply_keys.get(record.key)
                    if reply_key is None:
                        continue  # another device's reply
                    try:  # sealed to its terminal: only that terminal's key opens it
                        result = open_reply(record.value, reply_key, region)
                    except ReplyRefused:
                        continue  # forged or tampered: wait for a good copy
                    row_index = rows.get(result.request_id)
                    if row_index is not None:
                        answers.setdefault(row_index, result)  # a terminal keeps the first copy
    return answers, sent_s


def _metrics(y: npt.NDArray[Any], decided: npt.NDArray[Any]) -> tuple[float, float]:
    from sklearn.metrics import precision_score, recall_score

    return float(precision_score(y, decided, zero_division=0)), float(recall_score(y, decided))


def stream(data: Path, region: str, model: str, terminals: int, rate_per_s: float, timeout_s: float) -> int:
    """Stream the held-out set through terminals; print served vs offline metrics and latency."""
    held = np.load(data / "holdout.npz")
    X, y, offline = held["X"], held["y"], held["offline"]
    answers, sent_s = asyncio.run(_decisions(region, model, X, terminals, rate_per_s, timeout_s))
    answered = sorted(answers)
    if len(answered) < len(X):
        print(f"only {len(answered)} of {len(X)} transactions were answered within {timeout_s:.0f} s")
    if not answered:
        return 1
    served = np.array([answers[i].label for i in answered])
    total_ms = np.array([answers[i].total_ms for i in answered])
    versions = sorted({f"v{answers[i].model_version}" for i in answered})
    sp, sr = _metrics(y[answered], served)
    op, orc = _metrics(y[answered], offline[answered])
    print(
        json.dumps(
            {
                "transactions": len(X),
                "answered": len(answered),
                "fraud": int(y[answered].sum()),
                "model": f"{model} {', '.join(versions)}",
                "served": {"precision": round(sp, 4), "recall": round(sr, 4)},
                "offline": {"precision": round(op, 4), "recall": round(orc, 4)},
                "decisions_that_differ": int((served != offline[answered]).sum()),
                "sent_per_s": round(len(X) / sent_s, 1),
                "capture_to_decision_ms": {
                    "p50": round(float(np.percentile(total_ms, 50)), 2),
                    "p99": round(float(np.percentile(total_ms, 99)), 2),
                },
            },
            indent=2,
        )
    )
    return 0 if len(answered) == len(X) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    steps = parser.add_subparsers(dest="step", required=True)
    t = steps.add_parser("train", help="train, export fraud.onnx, keep the held-out set")
    t.add_argument("--out", type=Path, default=Path(".edgestream/fraud"))
    t.add_argument("--transactions", type=int, default=20_000)
    t.add_argument("--seed", type=int, default=7)
    s = steps.add_parser("stream", help="send the held-out set through terminals, compare the decisions")
    s.add_argument("--data", type=Path, default=Path(".edgestream/fraud"))
    s.add_argument("--region", default="eu-west")
    s.add_argument("--model", default="fraud-scorer")
    s.add_argument("--terminals", type=int, default=40)
    s.add_argument("--rate", type=float, default=400.0, help="transactions per second, all terminals")
    s.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args()
    if args.step == "train":
        train(args.out, args.transactions, args.seed)
        return 0
    return stream(args.data, args.region, args.model, args.terminals, args.rate, args.timeout_s)


if __name__ == "__main__":
    raise SystemExit(main())
