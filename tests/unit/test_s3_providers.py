"""Which S3 providers a test runs on (tests/fixtures/s3.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.s3 import TESTS, providers_for, selected_providers


@pytest.mark.parametrize(("value", "expected"), [
    ("", ["moto", "seaweedfs"]), ("moto", ["moto"]), (" seaweedfs ", ["seaweedfs"]),
    ("seaweedfs,moto", ["moto", "seaweedfs"]),
])
def test_the_env_variable_restricts_the_providers(value: str, expected: list[str]) -> None:
    assert selected_providers({"AMFS_TEST_S3_PROVIDERS": value}) == expected


def test_an_unknown_provider_is_a_usage_error() -> None:
    with pytest.raises(pytest.UsageError, match=r"unknown provider.*minio"):
        selected_providers({"AMFS_TEST_S3_PROVIDERS": "moto,minio"})


def test_integration_and_reliability_tests_run_on_every_provider() -> None:
    both = ["moto", "seaweedfs"]
    assert providers_for(TESTS / "integration" / "test_x.py", False, both) == both
    assert providers_for(TESTS / "reliability" / "test_x.py", False, both) == both
    assert providers_for(TESTS / "chart" / "test_x.py", False, both) == ["moto"]
    assert providers_for(Path("/elsewhere/test_x.py"), False, both) == ["moto"]
    assert providers_for(TESTS / "chart" / "test_x.py", False, ["seaweedfs"]) == ["seaweedfs"]


def test_moto_only_tests_run_on_moto_or_are_skipped_without_it() -> None:
    assert providers_for(TESTS / "integration" / "t.py", True, ["moto", "seaweedfs"]) == ["moto"]
    (skipped,) = providers_for(TESTS / "integration" / "t.py", True, ["seaweedfs"])
    assert skipped.values == ("moto",) and skipped.marks[0].name == "skip"
