"""The AMFS SDK's AgentMemory over S3Adapter, configured in each of the three documented forms."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from amfs import AgentMemory
from amfs_core.models import OutcomeType

from amfs_s3 import S3Adapter
from amfs_s3.config import S3Settings
from amfs_s3.exceptions import ConfigError


@pytest.fixture
def memory(s3_endpoint: str, bucket: str) -> Iterator[AgentMemory]:
    adapter = S3Adapter(bucket=bucket, prefix="amfs/", endpoint_url=s3_endpoint,
                        region_name="us-east-1")
    mem = AgentMemory(agent_id="my-agent", adapter=adapter)
    yield mem
    mem.close()


def test_write_read_list_history_search_and_outcome(memory: AgentMemory) -> None:
    memory.write("checkout-service", "retry-pattern", {"max_retries": 3}, confidence=0.7)
    memory.write("checkout-service", "retry-pattern", {"max_retries": 5}, confidence=0.7)
    memory.write("checkout-service", "timeout", "30s", confidence=0.9)

    current = memory.read("checkout-service", "retry-pattern")
    assert current is not None
    assert (current.version, current.value) == (2, {"max_retries": 5})
    assert current.provenance.agent_id == "my-agent"

    assert sorted(e.key for e in memory.list("checkout-service")) == ["retry-pattern", "timeout"]
    assert [e.value for e in memory.history("checkout-service", "retry-pattern")] == [
        {"max_retries": 3}, {"max_retries": 5},
    ]
    assert [e.key for e in memory.search(query="30s")] == ["timeout"]

    memory.read("checkout-service", "timeout")
    memory.commit_outcome("DEPLOY-1", OutcomeType.SUCCESS)
    after = memory.adapter.read("checkout-service", "timeout")
    assert after is not None and after.outcome_count == 1 and after.version == 2
    assert [r.outcome_ref for r in memory.adapter.list_outcomes()] == ["DEPLOY-1"]
    assert memory.stats().total_entries == 2


def test_programmatic_form(s3_settings: S3Settings) -> None:
    adapter = S3Adapter.from_settings(s3_settings)
    AgentMemory(agent_id="prog", adapter=adapter).write("svc", "k", "v")
    assert adapter.read("svc", "k") is not None
    adapter.close()


def test_yaml_form_through_the_sdk_factory(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    config = tmp_path / "amfs.yaml"
    config.write_text(
        "namespace: production\n"
        "layers:\n"
        "  primary:\n"
        "    adapter: s3\n"
        "    options:\n"
        f"      bucket: {bucket}\n"
        "      prefix: amfs/\n"
        f"      endpoint_url: {s3_endpoint}\n"
        "      region_name: us-east-1\n"
    )
    mem = AgentMemory(agent_id="yaml-agent", config_path=config)
    assert isinstance(mem.adapter, S3Adapter)
    mem.write("svc", "k", "from yaml")
    direct = S3Adapter.from_yaml(config)
    assert direct.settings.namespace == "production"
    entry = direct.read("svc", "k")
    assert entry is not None and entry.value == "from yaml"
    mem.close()
    direct.close()


def test_env_form(s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMFS_S3_BUCKET", bucket)
    monkeypatch.setenv("AMFS_S3_ENDPOINT", s3_endpoint)
    monkeypatch.delenv("AMFS_S3_PREFIX", raising=False)
    adapter = S3Adapter.from_env()
    assert adapter.settings.prefix == "amfs/"
    assert adapter.settings.region_name == os.environ["AWS_DEFAULT_REGION"]
    AgentMemory(agent_id="env-agent", adapter=adapter).write("svc", "k", "from env")
    assert adapter.read("svc", "k") is not None
    adapter.close()


def test_missing_bucket_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMFS_S3_BUCKET", raising=False)
    with pytest.raises(ConfigError, match="AMFS_S3_BUCKET is required"):
        S3Adapter.from_env()
    with pytest.raises(ConfigError, match="bucket is required"):
        S3Adapter(bucket="")
