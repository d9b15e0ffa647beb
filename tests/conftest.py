"""Fixtures live in tests/fixtures/ and are loaded here once for every test."""

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.sidecar",
    "tests.fixtures.s3_proxy",
    "tests.fixtures.kubernetes",
]
