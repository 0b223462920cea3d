"""The aggregator's faust worker logs at the level it is given: library debug lines are not built."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# In a child process: mode's logging setup replaces the root logger's handlers and level.
_PROBE = textwrap.dedent(
    """
    import logging, sys
    import faust
    from edgestream.workers.aggregator.app import quiet_worker
    app = faust.App("probe", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False,
                    autodiscover=False)
    worker = quiet_worker(app)
    worker._setup_logging()  # what execute_from_commandline does first
    for name in ("aiokafka", "faust"):
        logger = logging.getLogger(name)
        print(name, logger.isEnabledFor(logging.DEBUG), logger.isEnabledFor(logging.WARNING),
              file=sys.__stderr__)  # sys.stderr now goes to the logger
    """
)


def test_the_aggregator_worker_does_not_build_library_debug_records() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    levels = {
        name: (debug == "True", warning == "True")
        for name, debug, warning in (
            line.split() for line in done.stderr.splitlines() if line.split()[:1] in (["aiokafka"], ["faust"])
        )
    }
    assert levels == {"aiokafka": (False, True), "faust": (False, True)}, done.stderr
