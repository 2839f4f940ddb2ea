"""Soak (issue 9 point 5), short: ``scripts/soak --duration 30`` must pass, so CI runs the soak every build.

The full run is ``./scripts/soak`` (5 minutes; README "Soak test"). Here the same script runs for 30 seconds
against its own multi-worker gunicorn on PostgreSQL and Redis (the suite's servers when IDP_TEST_DATABASE_URL
and IDP_TEST_REDIS_URL are set, the machine's otherwise), and its JSON report is checked number by number.
"""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.soak, pytest.mark.live]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_short_soak_has_no_5xx_loses_nothing_and_keeps_memory_flat(tmp_path):
    report_file = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "soak"), "--duration", "30",
                           "--json", str(report_file)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(done.stdout)
    assert report_file.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert done.returncode == 0 and report["passed"], report["failures"]
    kinds = {kind.split(".")[0] for kind in report["requests_by_kind"]}
    assert kinds == {"login", "autologin", "refresh", "userinfo", "registration"}, kinds
    assert report["requests_total"] >= 300  # 30 s of eight clients: well over ten requests a second
    assert report["server_errors_5xx"] == 0 and report["unexpected_answers"] == 0
    records = report["records"]
    assert records["registrations_succeeded"] > 0 and records["tokens_issued"] > 0
    assert all(value == 0 for key, value in records.items()
               if key not in ("registrations_succeeded", "tokens_issued")), records
    assert len(report["worker_memory"]) == report["workers"] >= 2
    for worker in report["worker_memory"]:
        assert all(worker["rss_kib"][moment] for moment in ("start", "middle", "end")), worker
        assert abs(worker["drift_percent"]) <= 10, worker
    assert report["worker_restarts"] == 0 and report["ready_after"] == 200
