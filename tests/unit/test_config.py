"""Settings: defaults, then config.toml, then CASPARIAN_* environment, then overrides."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from casparian_nb.config import load_settings, parse_duration
from casparian_nb.errors import CasparianError, ConfigError


def test_defaults_and_private_home(tmp_path: Path) -> None:
    s = load_settings(tmp_path / "h", env={})
    assert s.job_timeout == 3600.0
    assert s.trust.allow_unsigned_python is True
    assert s.bind_host == "127.0.0.1"
    assert s.state_db == tmp_path / "h" / "state.sqlite"
    mode = stat.S_IMODE((tmp_path / "h").stat().st_mode)
    assert mode == 0o700
    for sub in ("tapes", "logs", "staging", "plugins"):
        assert (tmp_path / "h" / sub).is_dir()


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text(
        'job_timeout = "10m"\nworker_slots = 3\nmax_retries = 5\n'
        "[trust]\nallow_unsigned_python = false\n"
    )
    s = load_settings(home, env={})
    assert (s.job_timeout, s.worker_slots, s.max_retries) == (600.0, 3, 5)
    assert s.trust.allow_unsigned_python is False

    env = {"CASPARIAN_JOB_TIMEOUT": "250ms", "CASPARIAN_ALLOW_UNSIGNED_PYTHON": "1"}
    s = load_settings(home, env=env)
    assert s.job_timeout == 0.25
    assert s.worker_slots == 3  # still from the file
    assert s.trust.allow_unsigned_python is True

    s = load_settings(home, env=env, job_timeout=7)
    assert s.job_timeout == 7.0


def test_home_from_environment(tmp_path: Path) -> None:
    s = load_settings(env={"CASPARIAN_HOME": str(tmp_path / "envhome")})
    assert s.home == tmp_path / "envhome"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("job_timeout = \"soon\"\n", "job_timeout"),
        ("worker_slots = -1\n", "worker_slots"),
        ("no_such_setting = 1\n", "no_such_setting"),
        ("[trust]\nallowed_signers = [\"bob\"]\n", "bob"),
        ("[trust]\nsurprise = 1\n", "surprise"),
        ("job_timeout = \n", "config.toml"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, content: str, needle: str) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(home, env={})
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, CasparianError) and isinstance(info.value, ValueError)


def test_bad_env_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_retries"):
        load_settings(tmp_path / "h", env={"CASPARIAN_MAX_RETRIES": "many"})


def test_non_loopback_bind_needs_explicit_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allow_remote"):
        load_settings(tmp_path / "h", env={"CASPARIAN_BIND_HOST": "192.0.2.1"})
    s = load_settings(tmp_path / "h", env={"CASPARIAN_BIND_HOST": "192.0.2.1",
                                           "CASPARIAN_ALLOW_REMOTE": "true"})
    assert s.allow_remote


def test_unusable_home_is_a_clear_error(tmp_path: Path) -> None:
    # A regular file where the home's parent should be: fails for every user, root included.
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create home"):
        load_settings(blocker / "home", env={})


@pytest.mark.parametrize(("raw", "seconds"), [(5, 5.0), ("1.5s", 1.5), ("2m", 120.0),
                                              ("1h", 3600.0), ("100ms", 0.1)])
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


def test_worker_nice_defaults_to_yielding_and_reads_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(tmp_path / "h").worker_nice == 15
    monkeypatch.setenv("CASPARIAN_WORKER_NICE", "0")
    assert load_settings(tmp_path / "h").worker_nice == 0


def test_settings_env_gives_a_child_process_exactly_these_settings(tmp_path: Path) -> None:
    """What LocalCluster passes its sentinel and workers: overrides survive the trip."""
    from casparian_nb.launcher import settings_env

    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text("max_retries = 5\n[trust]\nallow_unsigned_python = false\n")
    mine = load_settings(home, env={}, job_timeout="90s", worker_slots=3, tape_redact=False)
    child = load_settings(env=settings_env(mine))
    assert child == mine
    assert (child.job_timeout, child.worker_slots, child.max_retries) == (90.0, 3, 5)
    assert child.tape_redact is False and child.trust.allow_unsigned_python is False
