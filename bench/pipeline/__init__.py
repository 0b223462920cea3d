"""``make bench``: the pipeline's speed beside two floors, measured side by side in one run.

One throwaway home (broker data, keys, models) and one local Kafka broker for the whole run. At each
offered load two targets run in turn, each against a fresh process on the far side of Kafka, each
after a short warm-up that is discarded:

* **pipeline**: an edge worker (``python -m edgestream worker``, one intra-op thread) serving region
  ``bench``, and the device fleet in this process; latency is capture -> result received.
* **echo floor**: the same fleet sending the same sealed envelopes to region ``bench-echo``, where
  ``python -m bench.pipeline echo`` republishes every record unchanged to the results topic with the
  worker's client settings: produce -> consume -> produce -> consume, i.e. the pipeline minus open,
  validate, batch, infer and audit. Its consumer also records the one-hop time (the producer's record
  timestamp -> consumed), the raw Kafka round trip.

Then bare onnxruntime (``InferenceSession.run``, one intra-op thread) on the same models at the batch
sizes the workers ran. Writes ``bench/results/pipeline.json`` and ``pipeline.png``; times are
reported, never asserted.
"""
