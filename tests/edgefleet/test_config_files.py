"""Configuration layers: file, then environment, then flags; bad input is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.app.config import load_agent_config
from edgefleet.controller.app.config import load_controller_config
from edgefleet.errors import ConfigError


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each layer overrides the one before it, key by key."""
    (tmp_path / "agent.toml").write_text(
        'api_listen = "127.0.0.1:9000"\nn_ctx = 512\nn_threads = 1\n'
    )
    monkeypatch.setenv("EDGEFLEET_AGENT_N_CTX", "1024")
    config = load_agent_config(tmp_path, n_threads=3, api_listen=None)
    assert (config.api_listen, config.n_ctx, config.n_threads) == ("127.0.0.1:9000", 1024, 3)


@pytest.mark.parametrize(
    "content, reason",
    [
        ("n_ctx = 'big'", "n_ctx: expected an integer"),
        ("n_ctx = -1", "n_ctx must be positive"),
        ("max_message_bytes = 0", "max_message_bytes must be at least 2097152"),
        ("nctx = 5", "unknown setting 'nctx'"),
        ("api_listen = 'localhost'", "is not HOST:PORT"),
        ("n_ctx = [", "is not valid TOML"),
    ],
)
def test_bad_agent_config_is_refused(tmp_path: Path, content: str, reason: str) -> None:
    """Wrong types, bounds, unknown keys, bad addresses and bad TOML are ConfigErrors."""
    (tmp_path / "agent.toml").write_text(content)
    with pytest.raises(ConfigError, match=reason):
        load_agent_config(tmp_path)


def test_controller_chunk_must_fit_in_a_message(tmp_path: Path) -> None:
    """A blob chunk larger than the gRPC message limit is refused at load time."""
    with pytest.raises(ConfigError, match="blob_chunk_bytes"):
        load_controller_config(tmp_path, blob_chunk_bytes=8 * 1024 * 1024)
