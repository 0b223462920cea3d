"""Entry point for ``python -m edgestream``."""

from edgestream.cli import main

main()
