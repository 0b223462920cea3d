"""The cloud aggregator: windows of the edge's summaries, the label join and drift (``app``), over
state kept as plain dicts (``windows``), judged against the references of ``references``."""
