"""Security, against a real api-server started as `scripts/env` starts one (its generated secret):
who may call Contrail's endpoint and the trigger API, path traversal, data escaped in the run
report, and the secrets' modes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import httpx
import jwt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from airflow_cluster import AirflowCluster
from tests_support import PIPELINES, ROOT, spec_variant

from contrail import preprocess, report
from contrail.demo import penguins_table, write_penguins
from contrail.layout import PipelineLayout

pytestmark = pytest.mark.slow

SCRIPT = '<script>alert("contrail")</script>'
XSS_RUN = "xss-in-the-data"


def _scrubbed_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRAIL"))}
    return {**env, "AIRFLOW_HOME": str(home)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An api-server and a dag-processor (no scheduler: a run triggered here stays queued)."""
    home = tmp_path_factory.mktemp("security")
    # The secrets exactly as a checkout gets them: scripts/env creates them on first use.
    subprocess.run([str(ROOT / "scripts" / "env"), "true"], env=_scrubbed_env(home), check=True, cwd=home)
    secret = (home / ".airflow" / "jwt_secret").read_text().strip()
    write_penguins(home / "data")
    specs = home / "pipelines"
    shutil.copytree(PIPELINES, specs)
    with AirflowCluster(
        home,
        components=("api-server", "dag-processor"),
        AIRFLOW__API_AUTH__JWT_SECRET=secret,
        CONTRAIL_SPEC_DIR=str(specs),
    ) as running:
        running.wait_for_dag("penguins")
        yield running


@pytest.fixture(scope="module")
def xss_report(server, tmp_path_factory) -> str:
    """A penguins run, preprocessed here, whose island values include a script tag; its report's URL."""
    data = tmp_path_factory.mktemp("xss_data")
    table = penguins_table()
    island = table.column("island")
    islands = pc.if_else(pc.equal(island, "Biscoe"), pa.scalar(SCRIPT), island)
    pq.write_table(table.set_column(table.schema.get_field_index("island"), "island", islands), data / "p.parquet")
    spec = spec_variant(tmp_path_factory.mktemp("xss_spec"), data_dir=server.home / "data")
    run = PipelineLayout(server.home / "artifacts", "penguins").run(XSS_RUN)
    preprocess.run(preprocess.PreprocessArgs(str(spec), str(data / "p.parquet"), str(run.step("preprocess"))))
    assert report.write_report(run.path) is not None
    return f"{server.base}/contrail/reports/penguins/{XSS_RUN}"


def _forged(server) -> str:
    """An admin token signed with a key that is not the server's secret."""
    real = server.token()
    claims = jwt.decode(real, options={"verify_signature": False})
    return jwt.encode(claims, "not-the-secret-" + "0" * 64, algorithm=jwt.get_unverified_header(real)["alg"])


# (method, path under the api-server, body): every Contrail endpoint, the trigger API, and the
# run-changing calls beside it.
WRITES = [
    ("POST", "/api/v2/dags/penguins/dagRuns", {"logical_date": None}),
    ("POST", "/api/v2/dags/penguins/clearTaskInstances", {"dry_run": True}),
    ("PATCH", "/api/v2/dags/penguins", {"is_paused": True}),
    ("DELETE", "/api/v2/dags/penguins/dagRuns/some-run", None),
]
READS = [("GET", f"/contrail/reports/penguins/{XSS_RUN}", None), ("GET", "/api/v2/dags/penguins/dagRuns", None)]


def _call(server, method, path, body, token=None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{server.base}{path}", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(("method", "path", "body"), WRITES + READS, ids=lambda v: v if isinstance(v, str) else "")
def test_no_credentials_or_a_forged_token_is_refused(server, xss_report, method, path, body):
    assert _call(server, method, path, body).status_code == 401
    # Airflow answers 403 "Invalid JWT token" to a token it cannot verify.
    assert _call(server, method, path, body, token=_forged(server)).status_code in (401, 403)
    assert _call(server, method, path, body, token="not-a-jwt").status_code in (401, 403)


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=lambda v: v if isinstance(v, str) else "")
def test_a_viewer_cannot_trigger_clear_pause_or_delete(server, method, path, body):
    response = _call(server, method, path, body, token=server.token("viewer", "viewer"))
    assert response.status_code == 403, response.text


def test_a_viewer_may_read_a_run_report(server, xss_report):
    # Airflow's viewer reads runs, task logs and XComs; the report shows less than those.
    response = httpx.get(xss_report, headers={"Authorization": f"Bearer {server.token('viewer', 'viewer')}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/contrail/reports/penguins/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/contrail/reports/..%2F..%2Fetc/passwd",
        "/contrail/reports/%2E%2E/%2E%2E",
        "/contrail/reports/penguins/..%2Fpenguins_daily",
        "/contrail/reports/penguins/%2Fetc%2Fpasswd",
    ],
)
def test_a_report_url_cannot_leave_the_run_folders(server, path):
    response = httpx.get(f"{server.base}{path}", headers={"Authorization": f"Bearer {server.token()}"}, timeout=30)
    assert response.status_code == 404, response.text
    assert "root:" not in response.text


@pytest.mark.parametrize(
    "data_source",
    ["../../../etc/passwd", "penguins/../../secrets/*.parquet", "/etc/passwd", "file:///etc/passwd", "s3://b/x"],
)
def test_a_data_source_out_of_the_data_folder_is_refused_at_trigger(server, data_source):
    body = {"logical_date": None, "conf": {"data_source": data_source}}
    response = server.api("POST", "/dags/penguins/dagRuns", json=body)
    assert response.status_code == 400, response.text
    assert "data_source" in response.text


def test_a_data_source_in_the_data_folder_is_accepted_at_trigger(server):
    for source in ("penguins/*.parquet", f"{server.home / 'data'}/penguins/*.parquet"):
        response = server.api(
            "POST", "/dags/penguins/dagRuns", json={"logical_date": None, "conf": {"data_source": source}}
        )
        assert response.status_code == 200, response.text


def test_values_from_the_data_are_escaped_in_the_report(server, xss_report):
    page = httpx.get(xss_report, headers={"Authorization": f"Bearer {server.token()}"}, timeout=30)
    assert page.status_code == 200
    assert "<script" not in page.text.lower()
    assert "&lt;script&gt;alert(&quot;contrail&quot;)&lt;/script&gt;" in page.text  # shown, as text


def test_the_secrets_are_private(server):
    folder = server.home / ".airflow"
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in [folder, *folder.iterdir()]}
    assert modes == {".airflow": 0o700, "jwt_secret": 0o600, "passwords.json": 0o600}
    assert os.stat(folder).st_uid == os.getuid()
    # And the server signs with that secret: a token it issues verifies with it.
    token = server.token()
    algorithm = jwt.get_unverified_header(token)["alg"]
    secret = (folder / "jwt_secret").read_text().strip()
    jwt.decode(token, secret, algorithms=[algorithm], options={"verify_aud": False})
