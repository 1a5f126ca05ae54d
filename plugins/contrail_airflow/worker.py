"""Worker identity, for `[core] hostname_callable`.

Airflow records the hostname of the machine that ran each task try. Several Celery workers on
one host (the tests, or containers sharing the host network) would all report the same one;
`CONTRAIL_WORKER_NAME` gives each its own, so the UI and the REST API show which worker ran
what. Unset, this is Airflow's default, the host's fully qualified name.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("CONTRAIL_WORKER_NAME") or socket.getfqdn()
