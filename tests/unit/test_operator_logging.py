"""``amfs-operator --debug`` never writes signed request headers (real boto3, moto)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from amfs_operator.cli import SIGNING_LOGGERS, OperatorConfig, configure_logging, parse_args
from amfs_operator.probe import ClientCache, Target, probe

ACCESS_KEY = "AKIADEBUGLOGGING0001"
SECRET_KEY = "debug/secret+that-must-not-leak"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in SIGNING_LOGGERS}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)


def test_debug_flag_is_parsed() -> None:
    assert parse_args(["--debug"]).debug is True
    assert parse_args([]).allow_operator_identity is False
    assert parse_args(["--allow-operator-identity"]).allow_operator_identity is True


def test_debug_log_names_no_access_key(
    restored_logging: None, s3_endpoint: str, bucket: str, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging(OperatorConfig(debug=True, log_format="text"))
    target = Target(bucket, "amfs/x/", s3_endpoint, "us-east-1",
                    access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    logging.getLogger("amfs_operator.probe").debug("event=marker_for_this_test")

    assert probe(ClientCache(), target, create=False).conditional_writes is True
    written = capfd.readouterr().err
    assert "event=marker_for_this_test" in written  # the operator's own DEBUG lines do appear
    assert ACCESS_KEY not in written and SECRET_KEY not in written

    # Without the pin, botocore's DEBUG lines would carry the key: the check above can fail.
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    probe(ClientCache(), target, create=False)
    assert ACCESS_KEY in capfd.readouterr().err
