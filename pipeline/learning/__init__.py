"""The learning loop's pure decisions: drift, retraining, rollout judgements."""
