"""Flags, env and config file resolve into one sidecar configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from amfs_s3.config import ConfigError
from amfs_sidecar import cli
from amfs_sidecar.server import parse_listen

ENV = {"AMFS_S3_BUCKET": "my-bucket", "AMFS_S3_ENDPOINT": "http://minio:9000"}


def config_for(argv: list[str], env: dict[str, str]) -> cli.SidecarConfig:
    args = cli.build_parser(env).parse_args(argv)
    settings = cli.load_settings(args, env)
    assert settings is not None
    return cli.sidecar_config(args, cli.with_overrides(settings, args), env)


def test_env_form_with_defaults() -> None:
    config = config_for([], ENV)
    assert config.settings.bucket == "my-bucket"
    assert config.settings.endpoint_url == "http://minio:9000"
    assert config.socket_path == Path("/var/run/amfs/amfs.sock")
    assert (config.metrics_port, config.max_entry_bytes, config.cache_bytes) == (
        9464, 1048576, 67108864)
    assert config.drain_seconds == 10 and config.listen is None and not config.read_only
    assert config.metrics_host == "0.0.0.0"  # Prometheus scrapes the pod's address


def test_flags_beat_env_and_the_config_file(tmp_path: Path) -> None:
    yaml = tmp_path / "amfs.yaml"
    yaml.write_text("namespace: prod\nlayers:\n  primary:\n    adapter: s3\n    options:\n"
                    "      bucket: from-yaml\n      poll_interval: 7\n")
    env = {**ENV, "AMFS_CONFIG": str(yaml), "AMFS_SOCKET": "/tmp/env.sock",
           "AMFS_METRICS_PORT": "9999", "AMFS_CREDENTIALS_DIR": "/etc/amfs/credentials"}
    config = config_for(["--poll-interval", "0.5", "--listen", "127.0.0.1:8741", "--read-only"],
                        env)
    assert (config.settings.bucket, config.settings.namespace) == ("from-yaml", "prod")
    assert config.settings.poll_interval == 0.5
    assert config.socket_path == Path("/tmp/env.sock")
    assert config.metrics_port == 9999
    assert config.credentials_dir == Path("/etc/amfs/credentials")
    assert config.listen == ("127.0.0.1", 8741) and config.read_only
    assert config_for(["--socket", "/x.sock"], env).socket_path == Path("/x.sock")


def test_embedded_s3_defaults_to_the_run_directory() -> None:
    args = cli.build_parser({}).parse_args(["--embedded-s3"])
    assert cli.load_settings(args, {}) is None  # the embedded server supplies them
    from amfs_s3.config import S3Settings

    config = cli.sidecar_config(args, S3Settings(bucket="amfs-local"), {})
    assert config.socket_path == Path("./.run/amfs.sock")
    assert "--unix-socket .run/amfs.sock" in cli.try_commands(config.socket_path)
    assert config.metrics_host == "127.0.0.1"  # a job on one's own machine stays on it
    explicit = cli.build_parser({}).parse_args(["--embedded-s3", "--metrics-host", "0.0.0.0"])
    assert cli.sidecar_config(explicit, S3Settings(bucket="amfs-local"), {}).metrics_host == (
        "0.0.0.0")


@pytest.mark.parametrize(("argv", "provider"), [
    (["--embedded-s3"], "seaweedfs"), (["--embedded-s3=seaweedfs"], "seaweedfs"),
    (["--embedded-s3=moto"], "moto"), ([], None),
])
def test_embedded_s3_is_seaweedfs_unless_moto_is_asked_for(argv: list[str],
                                                           provider: str | None) -> None:
    assert cli.build_parser(ENV).parse_args(argv).embedded_s3 == provider


def test_embedded_s3_refuses_an_unknown_provider(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser(ENV).parse_args(["--embedded-s3=minio"])
    assert "invalid choice: 'minio'" in capsys.readouterr().err


def test_check_storage_is_a_subcommand_with_its_own_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check-storage", "--help"], env={})
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: amfs-sidecar check-storage" in out and "--bucket" in out


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:8741", ("127.0.0.1", 8741)), ("localhost:1", ("localhost", 1)),
    ("[::1]:80", ("::1", 80)),
])
def test_listen_accepts_loopback(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("0.0.0.0:8741", "not a loopback address"), ("10.0.0.1:80", "not a loopback address"),
    ("127.0.0.1", "must be HOST:PORT"), ("127.0.0.1:http", "must be HOST:PORT"),
])
def test_listen_refuses_anything_else(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_listen(value)


@pytest.mark.parametrize("argv", [["--max-entry-bytes", "0"], ["--poll-interval", "-1"],
                                  ["--metrics-port", "70000"], ["--log-format", "xml"],
                                  ["--header-timeout", "0"], ["--keepalive-timeout", "-1"],
                                  ["--max-connections", "0"], ["--body-timeout", "0"],
                                  ["--scan-pages", "0"], ["--memory-limit-bytes", "0"]])
def test_out_of_range_flags_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str],
                                            restore_logging: None) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv, ENV)
    assert caught.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_missing_bucket_is_one_clear_error(capsys: pytest.CaptureFixture[str],
                                           restore_logging: None) -> None:
    assert cli.main([], {}) == 2
    assert "AMFS_S3_BUCKET is required" in capsys.readouterr().err


def test_agent_id_from_flag_env_or_none() -> None:
    assert config_for([], ENV).agent_id is None  # the server then uses the hostname
    assert config_for([], {**ENV, "AMFS_AGENT_ID": "pod-abc"}).agent_id == "pod-abc"
    assert config_for(["--agent-id", "flag"], {**ENV, "AMFS_AGENT_ID": "pod-abc"}
                      ).agent_id == "flag"


@pytest.mark.parametrize(("value", "explanation"), [
    ("0.0.0.0:8741", "is not a loopback address; the API has no authentication"),
    ("127.0.0.1", "must be HOST:PORT, e.g. 127.0.0.1:8741"),
])
def test_a_refused_listen_value_keeps_its_explanation(
        value: str, explanation: str, capsys: pytest.CaptureFixture[str],
        restore_logging: None) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--listen", value], ENV)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "argument --listen: --listen" in err and explanation in err
    assert "invalid" not in err  # argparse's own "invalid parse_listen value" is gone


def test_insecure_socket_dir_is_allowed_by_flag_or_env() -> None:
    assert not config_for([], ENV).allow_insecure_socket_dir
    assert config_for(["--allow-insecure-socket-dir"], ENV).allow_insecure_socket_dir
    assert config_for([], {**ENV, "AMFS_ALLOW_INSECURE_SOCKET_DIR": "true"}
                      ).allow_insecure_socket_dir


def test_the_rolling_scans_page_budget() -> None:
    assert config_for([], ENV).scan_pages == 5
    assert config_for(["--scan-pages", "40"], ENV).scan_pages == 40


def test_connection_flags_and_their_defaults() -> None:
    config = config_for([], ENV)
    assert (config.header_timeout, config.keepalive_timeout, config.max_connections,
            config.body_timeout) == (10.0, 30.0, None, 30.0)
    config = config_for(["--header-timeout", "2.5", "--keepalive-timeout", "5",
                         "--max-connections", "300", "--body-timeout", "4"], ENV)
    assert (config.header_timeout, config.keepalive_timeout, config.max_connections,
            config.body_timeout) == (2.5, 5.0, 300, 4.0)


def test_the_memory_limit_comes_from_the_injectors_env_or_the_flag(
        capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    assert config_for([], ENV).memory_limit_bytes is None
    assert config_for([], {**ENV, "AMFS_MEMORY_LIMIT_BYTES": "268435456"}).memory_limit_bytes \
        == 268435456
    assert config_for(["--memory-limit-bytes", "1000"],
                      {**ENV, "AMFS_MEMORY_LIMIT_BYTES": "268435456"}).memory_limit_bytes == 1000
    with pytest.raises(SystemExit) as caught:  # e.g. "256Mi" written by hand: bytes only
        cli.main([], {**ENV, "AMFS_MEMORY_LIMIT_BYTES": "256Mi"})
    assert caught.value.code == 2
    assert "--memory-limit-bytes: invalid int value: '256Mi'" in capsys.readouterr().err
