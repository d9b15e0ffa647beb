"""The client-connection budget leaves descriptors for everything else."""

from __future__ import annotations

import resource

import pytest

from amfs_sidecar.fdbudget import (
    BASE_DESCRIPTORS,
    DEFAULT_MAX_CONNECTIONS,
    MIN_CONNECTIONS,
    connection_budget,
    descriptor_reserve,
    nofile_soft_limit,
)


def test_the_reserve_adds_every_other_use_of_descriptors() -> None:
    reserve = descriptor_reserve(s3_connections=32, accept_burst=80, other_connections=16,
                                 lingering_refusals=32)
    assert reserve == BASE_DESCRIPTORS + 32 + 80 + 16 + 32


@pytest.mark.parametrize(("configured", "soft", "reserve", "expected"), [
    (None, 1_048_576, 200, DEFAULT_MAX_CONNECTIONS),  # plenty of descriptors: the default
    (None, 1024, 200, 824),                            # a 1,024 limit: the default lowered
    (None, 256, 176, 80),                              # the 256 limit
    (5000, 1_048_576, 200, 5000),                      # configured above the default
    (100, 1024, 200, 100),                             # configured below the budget
    (5000, 1024, 200, 824),                            # configured above the budget: lowered
    (None, 100, 176, MIN_CONNECTIONS),                 # hopelessly low: a few still connect
    (2, 100, 176, 2),                                  # ... unless configured lower still
    (2, 1_048_576, 200, 2),
])
def test_budget_is_the_configured_limit_lowered_to_fit(
        configured: int | None, soft: int, reserve: int, expected: int) -> None:
    assert connection_budget(configured, soft, reserve) == expected


def test_soft_limit_is_the_process_rlimit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert nofile_soft_limit() == (soft if soft != resource.RLIM_INFINITY else 1 << 20)
