"""Timestamps parsed by the standard library mean what botocore's own parser makes of them."""

from __future__ import annotations

import pytest
from botocore.utils import parse_timestamp

from amfs_s3.timestamps import parse_s3_timestamp


@pytest.mark.parametrize("value", [
    "2026-12-04T18:33:52.000Z",      # ListObjectsV2 LastModified (AWS, moto)
    "2026-12-04T18:33:52Z",          # without fractions (SeaweedFS)
    "2026-12-04T18:33:52.123456Z",
    "2026-12-04t18:33:52.5z",
    "Fri, 04 Dec 2026 18:33:52 GMT",  # Last-Modified of HEAD/GET: botocore's parser
    "2026-12-04T18:33:52+01:00",
    1764873232,
    "1764873232.25",
])
def test_the_same_instant_as_botocore(value: object) -> None:
    ours, theirs = parse_s3_timestamp(value), parse_timestamp(value)
    assert ours.tzinfo is not None
    assert ours.timestamp() == theirs.timestamp()


def test_a_malformed_value_fails_as_botocores_does() -> None:
    with pytest.raises(ValueError):
        parse_s3_timestamp("not a timeZ")
