"""Benchmark instrumentation, not part of kdflow: time every HTTP call this Python process makes.

benchmarks/bench_scale.py puts this folder on the PYTHONPATH of the Ray nodes and sweep drivers it
starts and names a folder in KDFLOW_BENCH_CALL_LOG; Python imports ``sitecustomize`` at start-up,
so every trial worker appends one line per tracking call (start time, seconds, method, path) to a
file of its own. That is the client-side latency of MLflow's calls, retries included.
"""

import os
import time
import urllib.parse

if os.environ.get("KDFLOW_BENCH_CALL_LOG"):
    import requests.adapters

    _send = requests.adapters.HTTPAdapter.send

    def _timed_send(self, request, *args, **kwargs):
        started = time.time()
        try:
            return _send(self, request, *args, **kwargs)
        finally:
            path = urllib.parse.urlsplit(request.url).path
            with open(os.path.join(os.environ["KDFLOW_BENCH_CALL_LOG"], f"{os.getpid()}.tsv"), "a") as log:
                log.write(f"{started:.3f}\t{time.time() - started:.4f}\t{request.method}\t{path}\n")

    requests.adapters.HTTPAdapter.send = _timed_send
