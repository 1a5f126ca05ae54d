"""The embedded mode's secrets: readable by their owner only."""

from __future__ import annotations

import os
import stat
import subprocess

from tests_support import ROOT


def _modes(home):
    folder = home / ".airflow"
    return {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in [folder, *folder.iterdir()]}


def test_scripts_env_creates_secrets_0600_in_a_0700_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRAIL"))}
    env["AIRFLOW_HOME"] = str(tmp_path)
    subprocess.run([str(ROOT / "scripts" / "env"), "true"], env=env, check=True, cwd=tmp_path)
    assert _modes(tmp_path) == {".airflow": 0o700, "jwt_secret": 0o600, "passwords.json": 0o600}
    assert len((tmp_path / ".airflow" / "jwt_secret").read_text().strip()) == 64
    # A checkout made before this change: loosened modes are tightened, the secret is kept.
    secret = (tmp_path / ".airflow" / "jwt_secret").read_text()
    os.chmod(tmp_path / ".airflow", 0o755)
    os.chmod(tmp_path / ".airflow" / "jwt_secret", 0o644)
    subprocess.run([str(ROOT / "scripts" / "env"), "true"], env=env, check=True, cwd=tmp_path)
    assert _modes(tmp_path) == {".airflow": 0o700, "jwt_secret": 0o600, "passwords.json": 0o600}
    assert (tmp_path / ".airflow" / "jwt_secret").read_text() == secret
