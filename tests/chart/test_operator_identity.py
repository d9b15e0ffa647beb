"""operator.allowOperatorIdentity: off by default, one flag when on (rendered by Helm)."""

from __future__ import annotations

from amfs_operator.cli import parse_args
from tests.chart.conftest import Render, find, objects


def operator_config(render: Render, **values: object):  # type: ignore[no-untyped-def]
    deployment = find(objects(render(values or None)), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return parse_args(container["args"][1:])


def test_the_operator_lends_no_identity_by_default(render: Render) -> None:
    assert operator_config(render).allow_operator_identity is False


def test_the_value_turns_the_flag_on(render: Render) -> None:
    config = operator_config(render, operator={"allowOperatorIdentity": True})
    assert config.allow_operator_identity is True
