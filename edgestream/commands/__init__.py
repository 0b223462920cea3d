"""Command groups of the ``edgestream`` CLI, one module per group."""
