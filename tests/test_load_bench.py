"""`xmodal bench load`, small: real gunicorn + 2 real workers, 5 annotators for ~5 s, 500 items.

No timing assertions (the machine is shared): the run must lose no pair, stop its processes, and
print its figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xmodal.benchmarks.load_report import histogram_quantile, parse_metrics


def test_histogram_quantile_interpolates_like_prometheus():
    text = "\n".join(['xmodal_webhook_seconds_bucket{le="0.01"} 50', 'xmodal_webhook_seconds_bucket{le="0.05"} 99',
                      'xmodal_webhook_seconds_bucket{le="+Inf"} 100', "xmodal_webhook_seconds_count 100"])
    buckets = parse_metrics(text)["buckets"]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.01)
    assert histogram_quantile(buckets, 0.75) == pytest.approx(0.01 + 0.04 * 25 / 49)
    assert histogram_quantile(buckets, 0.999) == pytest.approx(0.05)   # beyond the last finite bound
    assert histogram_quantile([], 0.5) is None


def _processes_mentioning(*needles: str) -> list[str]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(n in cmd for n in needles):
                out.append(f"{entry}: {cmd}")
    return out


def test_small_load_run_loses_no_pair_and_prints_its_figures(xenv, tmp_path):
    out = tmp_path / "load.json"
    cmd = [sys.executable, "-m", "xmodal.cli", "bench", "load", "--annotators", "5", "--seconds", "5",
           "--items", "500", "--tasks", "60", "--think", "0-0.5", "--json", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, REDIS_URL=xenv.url))
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    for figure in ("webhook latency", "client p50", "server (xmodal_webhook_seconds", "rebuilds",
                   "pairs per rebuild", "label -> index", "label -> /predict", "worker's own latency",
                   "lost 0", "goals:", "webhook p99 < 50 ms", "no pair lost", "label -> prediction p95 < 5 s"):
        assert figure in stdout, (figure, stdout)
    res = json.loads(out.read_text())
    assert res["webhook"]["requests"] > 0 and res["webhook"]["errors"] == 0
    assert res["pairs"]["acknowledged"] > 0
    assert res["pairs"]["lost"] == 0 and res["pairs"]["pair_store_mismatch"] == 0
    assert res["pairs"]["in_pair_store"] == res["pairs"]["acknowledged"]
    assert res["met"]["lost_pairs"] is True
    assert res["rebuilds"]["versions"] >= 1 and res["rebuilds"]["failed_jobs"] == 0
    assert res["label_to_prediction"]["measured"] > 0
    # every process it started is gone (gunicorn binds the port, the rq workers carry the prefix)
    prefix, port = res["settings"]["prefix"], res["settings"]["backend_url"].rsplit(":", 1)[1]
    assert not _processes_mentioning(prefix, f"127.0.0.1:{port}")
    # and its private keys are deleted
    assert not list(xenv.redis.scan_iter(match=f"*{prefix}*", count=1000))
