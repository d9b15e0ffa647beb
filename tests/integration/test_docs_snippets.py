"""The AMFS docs' three S3 adapter configurations, run as a new user would.

Each snippet is the docs' text (https://raia-live.github.io/amfs/adapters/s3,
"Configuration": YAML, Environment Variables, Programmatic), with one change:
the endpoint points at the test S3 server. Each runs in a fresh interpreter with
nothing imported first, then the test looks for the objects at the keys the
docs' "Object Layout" names.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.s3 import all_keys, delete_bucket

DOCS_BUCKET = "my-amfs-bucket"  # the docs' bucket name, kept verbatim

DOCS_YAML = """\
namespace: production
layers:
  primary:
    adapter: s3
    options:
      bucket: my-amfs-bucket
      prefix: amfs/                    # object key prefix (optional)
      endpoint_url: ""                 # custom endpoint for non-AWS (optional)
      region_name: us-east-1           # AWS region (optional)
"""

DOCS_PROGRAMMATIC = """\
from amfs import AgentMemory
from amfs_s3 import S3Adapter

adapter = S3Adapter(
    bucket="my-amfs-bucket",
    prefix="amfs/",
    endpoint_url="https://s3.acceleratedcloudstorage.com",
    region_name="us-east-1",
)

mem = AgentMemory(agent_id="my-agent", adapter=adapter)
"""

# The docs' table of variables as a user exports them, then the adapter with no arguments.
DOCS_ENV = {
    "AMFS_S3_BUCKET": "my-amfs-bucket",
    "AMFS_S3_PREFIX": "amfs/",
    "AMFS_S3_ENDPOINT": "https://s3.acceleratedcloudstorage.com",
    "AWS_DEFAULT_REGION": "us-east-1",
}
DOCS_ENV_PYTHON = """\
from amfs import AgentMemory
from amfs_s3 import S3Adapter

mem = AgentMemory(agent_id="my-agent", adapter=S3Adapter())
"""

# The YAML's one user: the SDK, nothing else imported (the SDK wants a Path).
LOAD_YAML = """\
from pathlib import Path
from amfs import AgentMemory
mem = AgentMemory(agent_id="my-agent", config_path=Path("amfs.yaml"))
"""

# What the user does next, the same after every form.
USE = """
mem.write("checkout-service", "retry-pattern", {"max_retries": 3}, confidence=0.8)
entry = mem.read("checkout-service", "retry-pattern")
from amfs_core.models import OutcomeType
mem.commit_outcome("DEPLOY-1", OutcomeType.SUCCESS)
print("RESULT", entry.value["max_retries"], type(mem.adapter).__module__)
"""

# Makes ``import amfs_sidecar`` / ``import amfs_operator`` fail, as on a machine
# that has only the library.
BLOCK_DAEMONS = """\
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("amfs_sidecar", "amfs_operator"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _Blocked())
"""
CHECK_BLOCKED = """
for name in ("amfs_sidecar", "amfs_operator"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} imported despite the blocker")
    assert name not in sys.modules, name
print("BLOCKED-OK")
"""


@pytest.fixture
def docs_bucket(s3_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The docs' bucket, empty, and gone afterwards: the snippets name it, and so does
    the kubectl example (tests/integration/operator/test_kubectl.py), which may run
    next on the same S3 server."""
    with contextlib.suppress(s3_client.exceptions.BucketAlreadyOwnedByYou):
        s3_client.create_bucket(Bucket=DOCS_BUCKET)
    for key in all_keys(s3_client, DOCS_BUCKET):
        s3_client.delete_object(Bucket=DOCS_BUCKET, Key=key)
    yield DOCS_BUCKET
    delete_bucket(s3_client, DOCS_BUCKET)


def fresh_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMFS_", "AWS_"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def run(code: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"snippet failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def point_at(text: str, endpoint: str) -> str:
    """The one change the tests make: the docs' endpoint becomes the test server."""
    changed = text.replace("https://s3.acceleratedcloudstorage.com", endpoint)
    changed = changed.replace('endpoint_url: ""', f'endpoint_url: "{endpoint}"')
    assert changed != text, "the snippet names no endpoint to point at the test server"
    return changed


def assert_documented_objects(s3_client, namespace: str) -> None:  # type: ignore[no-untyped-def]
    keys = all_keys(s3_client, DOCS_BUCKET)
    root = f"amfs/{namespace}/"
    version = f"{root}entries/checkout-service/retry-pattern/v1.json"
    assert version in keys
    assert f"{root}outcomes/DEPLOY-1.json" in keys
    stored = json.loads(s3_client.get_object(Bucket=DOCS_BUCKET, Key=version)["Body"].read())
    assert (stored["entity_path"], stored["key"], stored["value"]) == (
        "checkout-service", "retry-pattern", {"max_retries": 3})
    # The outcome moved confidence: a second version, and a journal record of each change.
    assert f"{root}entries/checkout-service/retry-pattern/v2.json" in keys
    journal = [k for k in keys if k.startswith(f"{root}journal/")]
    assert len(journal) == 3, journal


def test_the_docs_programmatic_snippet(s3_endpoint, s3_client, docs_bucket, tmp_path) -> None:
    out = run(point_at(DOCS_PROGRAMMATIC, s3_endpoint) + USE, tmp_path, fresh_env())
    assert "RESULT 3 amfs_s3.adapter" in out
    assert_documented_objects(s3_client, "default")


def test_the_docs_yaml_through_agent_memory_with_no_other_import(
    s3_endpoint, s3_client, docs_bucket, tmp_path
) -> None:
    (tmp_path / "amfs.yaml").write_text(point_at(DOCS_YAML, s3_endpoint))
    code = LOAD_YAML + USE
    out = run(code, tmp_path, fresh_env())
    assert "RESULT 3 amfs_s3.adapter" in out
    assert_documented_objects(s3_client, "production")


def test_the_docs_environment_form_with_no_arguments(
    s3_endpoint, s3_client, docs_bucket, tmp_path
) -> None:
    env = fresh_env(**{k: point_at(v, s3_endpoint) if k == "AMFS_S3_ENDPOINT" else v
                       for k, v in DOCS_ENV.items()})
    out = run(DOCS_ENV_PYTHON + USE, tmp_path, env)
    assert "RESULT 3 amfs_s3.adapter" in out
    assert_documented_objects(s3_client, "default")


def test_without_a_bucket_the_error_names_both_ways_to_give_it(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-c", DOCS_ENV_PYTHON], cwd=tmp_path, env=fresh_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ConfigError" in done.stderr
    assert "S3Adapter(bucket=...)" in done.stderr and "AMFS_S3_BUCKET" in done.stderr


@pytest.mark.parametrize("form", ["programmatic", "yaml"])
def test_amfs_s3_works_where_the_sidecar_and_operator_cannot_be_imported(
    s3_endpoint, s3_client, docs_bucket, tmp_path, form: str
) -> None:
    if form == "yaml":
        (tmp_path / "amfs.yaml").write_text(point_at(DOCS_YAML, s3_endpoint))
        snippet = LOAD_YAML
    else:
        snippet = point_at(DOCS_PROGRAMMATIC, s3_endpoint)
    code = BLOCK_DAEMONS + CHECK_BLOCKED + snippet + USE + CHECK_BLOCKED
    out = run(code, tmp_path, fresh_env())
    assert out.count("BLOCKED-OK") == 2
    assert "RESULT 3 amfs_s3.adapter" in out
    assert_documented_objects(s3_client, "production" if form == "yaml" else "default")


def test_the_blocker_blocks(tmp_path) -> None:
    """Guards the test above from passing vacuously."""
    code = BLOCK_DAEMONS + textwrap.dedent("""
        try:
            import amfs_sidecar.api
        except ImportError as exc:
            print("refused:", exc)
    """)
    assert "refused: amfs_sidecar is blocked" in run(code, tmp_path, fresh_env())
