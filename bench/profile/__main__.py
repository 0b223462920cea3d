"""``python -m bench.profile exec <module> [args...]``: run ``python -m <module> [args...]`` with the
sampler started (when ``EDGESTREAM_PROFILE_*`` are set); ``python -m bench.profile report <dir>``:
sum a profiled run's samples into buckets (``buckets.py``) and print them as JSON (per request too,
given the requests the load sent)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from bench.profile.sampler import start_from_env


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[0] == "exec":
        module = argv[1]
        start_from_env(module.rpartition(".")[2])
        sys.argv = [module, *argv[2:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    if len(argv) in (2, 3) and argv[0] == "report":
        from bench.profile.buckets import report

        requests = int(argv[2]) if len(argv) == 3 else None
        print(json.dumps(report(Path(argv[1]), requests), indent=2))
        return
    sys.exit("usage: python -m bench.profile exec <module> [args...] | report <dir> [requests]")


if __name__ == "__main__":
    main(sys.argv[1:])
