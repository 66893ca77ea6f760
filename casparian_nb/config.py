"""One typed settings object: defaults, then ``<home>/config.toml``, then ``CASPARIAN_*``.

>>> s = load_settings(home="/tmp/h")          # doctest: +SKIP
>>> s.job_timeout, s.trust.allow_unsigned_python  # doctest: +SKIP
(3600.0, True)

``config.toml`` keeps every setting at the top level except the trust policy::

    job_timeout = "10m"
    worker_slots = 2
    [trust]
    allow_unsigned_python = false
    allowed_signers = ["alice"]
    [trust.keys]
    alice = "<base64 Ed25519 public key>"

Each top-level field can also be set as ``CASPARIAN_<FIELD>`` (upper case), e.g.
``CASPARIAN_JOB_TIMEOUT=30s``; ``CASPARIAN_ALLOW_UNSIGNED_PYTHON`` sets the trust flag.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["EXECUTORS", "Settings", "TrustSettings", "default_home", "ensure_home", "load_settings"]

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
#: The executors ``Settings.executor`` may name.
EXECUTORS = ("local", "dask")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_duration(value: Any, name: str = "duration") -> float:
    """Seconds from ``5``, ``0.5``, ``"250ms"``, ``"5s"``, ``"10m"`` or ``"1h"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ConfigError(f"{name}: {value!r} is not a duration (e.g. 250ms, 5s, 10m, 1h)")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ConfigError(f"{name}: must not be negative, got {value!r}")
    return seconds


def parse_bool(value: Any, name: str = "flag") -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true/false, got {value!r}")


@dataclass(frozen=True)
class TrustSettings:
    """The plugin trust policy (``[trust]`` in config.toml)."""

    #: Run plugins that carry no valid signature. Default true for a local single-user home.
    allow_unsigned_python: bool = True
    #: Signer ids whose Ed25519 signatures make a plugin runnable.
    allowed_signers: tuple[str, ...] = ()
    #: Signer id -> base64 raw Ed25519 public key.
    keys: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Every tunable of casparian_nb, with its default."""

    home: Path
    #: Plugin-host slots per worker; 0 means the number of cores.
    worker_slots: int = 0
    #: Workers ``casparian start`` / ``cf.start()`` launch.
    workers: int = 2
    #: Niceness added to worker processes and their plugin hosts, and to their sessions'
    #: autogroups (0: none): on a busy machine the notebook kernel and the sentinel stay
    #: responsive (at 5 a trivial cell still waited 50-140 ms behind 2 busy workers).
    worker_nice: int = 15
    #: Per-job timeout (seconds); a hung plugin is killed and the job aborted.
    job_timeout: float = 3600.0
    #: Grace between SIGTERM and SIGKILL when a plugin host is killed.
    cancel_grace: float = 0.05
    #: Worker heartbeat period and the silence after which a worker counts as lost.
    heartbeat_interval: float = 1.0
    worker_timeout: float = 10.0
    #: Transient failures: retries before dead-letter, and the first backoff (doubles).
    max_retries: int = 3
    retry_backoff: float = 1.0
    #: Plugin hosts killed by a signal (the OOM killer, ``kill -9``) while running a job:
    #: how often the job is run again before it fails. A budget of its own, apart from
    #: ``max_retries``: a killed host says nothing about the plugin.
    host_kill_retries: int = 3
    #: How often one job may be retried by hand (``casparian job retry``, ``ctl.retry``);
    #: each retry is a new attempt with fresh automatic budgets. Beyond it, retry refuses.
    manual_retry_limit: int = 5
    #: Address the sentinel binds; anything but loopback needs allow_remote = true.
    bind_host: str = "127.0.0.1"
    allow_remote: bool = False
    control_port: int = 0
    worker_port: int = 0
    events_port: int = 0
    #: Wire messages above this size are refused.
    max_message_bytes: int = 64 * 1024 * 1024
    #: Control client per-request timeout.
    request_timeout: float = 5.0
    #: How long a promotion waits for a DuckDB sink file another process holds (a notebook)
    #: before its job fails; meanwhile other promotions go on.
    sink_lock_timeout: float = 10.0
    #: Longest the committer keeps a DuckDB sink file open through a burst of promotions,
    #: seconds (0: open and close it for every job). Readers are skipped while it is open.
    duckdb_hold_s: float = 1.0
    #: Default sink when a submit names none ("" -> parquet://<home>/output).
    default_sink: str = ""
    #: A standalone run (``casparian run``) into one sink stages up to this many small
    #: files together: one staging, one file per output and one promotion (for DuckDB one
    #: transaction) for all of them, while each file stays its own job (result, error, log,
    #: quarantine limit). 1: every file alone, as the sentinel's workers do.
    run_batch_files: int = 32
    #: Per-job address-space limit for plugin hosts in MiB (0 = none).
    job_memory_limit_mb: int = 0
    #: Disk space each plugin host's log (its stdout + stderr) may take, in MiB (0 = no cap):
    #: ``host-*.log`` plus one older part ``host-*.log.1``, each at most half; see
    #: docs/internals.md "Logs".
    host_log_max_mb: int = 10
    #: The same for the sentinel's own log (``sentinel.log`` + ``sentinel.log.1``), in MiB
    #: (0 = no cap): refusals of hostile traffic are rate-limited, but never unbounded.
    sentinel_log_max_mb: float = 10.0
    #: Hash paths and free text in tape payloads.
    tape_redact: bool = True
    #: The sentinel records its events on a tape under <home>/tapes (false: no sentinel tape;
    #: for measuring what recording costs).
    sentinel_tape: bool = True
    #: How the sentinel places jobs: "local" (worker processes on this machine) or "dask"
    #: (a Dask cluster, reached at ``scheduler`` or through ``scheduler_file``); see
    #: docs/scale-out.md.
    executor: str = "local"
    scheduler: str = ""
    scheduler_file: str = ""
    trust: TrustSettings = field(default_factory=TrustSettings)

    # -- derived locations -------------------------------------------------------------
    @property
    def state_db(self) -> Path:
        return self.home / "state.sqlite"

    @property
    def run_ledger(self) -> Path:
        """What standalone runs materialized (``casparian run``; the state DB is the
        sentinel's alone)."""
        return self.home / "run_ledger.sqlite"

    @property
    def connection_file(self) -> Path:
        return self.home / "sentinel.json"

    @property
    def tapes_dir(self) -> Path:
        return self.home / "tapes"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def plugins_dir(self) -> Path:
        return self.home / "plugins"

    @property
    def output_dir(self) -> Path:
        return self.home / "output"

    @property
    def keys_dir(self) -> Path:
        """The home's signing keys (``casparian plugin keygen``): ``<signer>.key`` (0600,
        private) and ``<signer>.pub``; every ``.pub`` here is a trusted signer of this home."""
        return self.home / "keys"

    @property
    def effective_slots(self) -> int:
        return self.worker_slots or (os.cpu_count() or 1)

    @property
    def effective_default_sink(self) -> str:
        return self.default_sink or f"parquet://{self.output_dir}"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (used by tests and the CLI)."""
        return replace(self, **changes)


_SCALAR_FIELDS = {f.name: f for f in fields(Settings) if f.name not in ("home", "trust")}


def default_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    raw = env.get("CASPARIAN_HOME")
    return Path(raw).expanduser() if raw else Path.home() / ".casparian_flow"


def ensure_home(home: Path) -> Path:
    """Create the home and its sub-directories, private to the user (0700)."""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in ("tapes", "logs", "staging", "plugins"):
            (home / sub).mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create home directory {home}: {exc.strerror or exc}; "
            "choose a writable one with --home or CASPARIAN_HOME"
        ) from exc
    return home


def _coerce(name: str, value: Any) -> Any:
    f = _SCALAR_FIELDS[name]
    default = f.default
    if isinstance(default, bool):
        return parse_bool(value, name)
    if isinstance(default, float):
        return parse_duration(value, name)
    if isinstance(default, int):
        try:
            out = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if out < 0:
            raise ConfigError(f"{name}: must not be negative, got {value!r}")
        return out
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _trust_from(raw: Mapping[str, Any], base: TrustSettings) -> TrustSettings:
    known = {"allow_unsigned_python", "allowed_signers", "keys", "mode", "allow_unsigned_native"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"[trust]: unknown key(s) {', '.join(sorted(unknown))}")
    allow = parse_bool(raw.get("allow_unsigned_python", base.allow_unsigned_python),
                       "trust.allow_unsigned_python")
    signers = raw.get("allowed_signers", list(base.allowed_signers))
    if not isinstance(signers, list) or not all(isinstance(s, str) and s.strip() == s and s
                                                for s in signers):
        raise ConfigError("trust.allowed_signers: expected a list of non-empty signer ids")
    keys = raw.get("keys", dict(base.keys))
    if not isinstance(keys, dict) or not all(isinstance(v, str) and v for v in keys.values()):
        raise ConfigError("trust.keys: expected a table of signer id = base64 public key")
    for s in signers:
        if s not in keys:
            raise ConfigError(f"trust.allowed_signers: signer {s!r} missing from [trust.keys]")
    return TrustSettings(allow_unsigned_python=allow, allowed_signers=tuple(signers), keys=keys)


def _with_home_keys(keys_dir: Path, base: TrustSettings) -> TrustSettings:
    """``base`` plus the signers whose public keys ``casparian plugin keygen`` left in the
    home's ``keys/`` (``<signer>.pub``): keygen → sign → run works with no config edit."""
    try:
        pubs = sorted(keys_dir.glob("*.pub"))
    except OSError:
        return base
    if not pubs:
        return base
    keys, signers = dict(base.keys), list(base.allowed_signers)
    for pub in pubs:
        signer = pub.stem
        try:
            key = pub.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{pub}: unreadable public key: {type(exc).__name__}") from exc
        if keys.get(signer, key) != key:
            raise ConfigError(f"{pub}: signer {signer!r} has another key in [trust.keys]; "
                              "remove one of them")
        keys[signer] = key
        if signer not in signers:
            signers.append(signer)
    return dataclasses.replace(base, keys=keys, allowed_signers=tuple(signers))


def load_settings(
    home: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    create: bool = True,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults, then ``<home>/config.toml``, then ``CASPARIAN_*``, then
    keyword overrides. ``create`` makes the home (0700) when missing."""
    env = os.environ if env is None else env
    home_path = Path(home).expanduser() if home is not None else default_home(env)
    home_path = home_path.absolute()
    if create:
        ensure_home(home_path)
    values: dict[str, Any] = {}
    trust = TrustSettings()

    cfg = home_path / "config.toml"
    if cfg.is_file():
        try:
            data = tomllib.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{cfg}: {exc}") from exc
        for key, value in data.items():
            if key == "trust":
                if not isinstance(value, dict):
                    raise ConfigError(f"{cfg}: [trust] must be a table")
                trust = _trust_from(value, trust)
            elif key in _SCALAR_FIELDS:
                values[key] = _coerce(key, value)
            else:
                raise ConfigError(f"{cfg}: unknown setting {key!r}")

    for name in _SCALAR_FIELDS:
        raw = env.get(f"CASPARIAN_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, raw)
    raw_allow = env.get("CASPARIAN_ALLOW_UNSIGNED_PYTHON")
    if raw_allow is not None:
        trust = dataclasses.replace(
            trust,
            allow_unsigned_python=raw_allow.strip().lower() in _TRUE,
        )

    for key, value in overrides.items():
        if key == "trust":
            trust = value
        elif key in _SCALAR_FIELDS:
            values[key] = _coerce(key, value)
        else:
            raise ConfigError(f"unknown setting {key!r}")

    trust = _with_home_keys(home_path / "keys", trust)
    settings = Settings(home=home_path, trust=trust, **values)
    if settings.executor not in EXECUTORS:
        raise ConfigError(f"executor: {settings.executor!r} is not one of "
                          f"{', '.join(EXECUTORS)}")
    if settings.bind_host not in ("127.0.0.1", "localhost", "::1") and not settings.allow_remote:
        raise ConfigError(
            f"bind_host = {settings.bind_host!r} is not loopback; set allow_remote = true "
            "to expose the sentinel beyond this machine"
        )
    return settings
