"""Plugin security rules: path confinement (F12) and signatures + trust policy (F13).

Public names are re-exported by :mod:`casparian_nb.plugins`; import them from there.

A signature sits next to the plugin's real (symlink-resolved) file as ``<file>.py.sig``::

    {"signer": "alice", "algorithm": "ed25519",
     "source_sha256": "<hex>", "signature": "<base64 Ed25519 signature of the raw source bytes>"}

Policy (``[trust]`` in config.toml, :class:`~casparian_nb.config.TrustSettings`):

* a valid signature by an allowed signer → runnable (``"signed:<signer>"``);
* no ``.sig`` → runnable only if ``allow_unsigned_python`` (``"unsigned-allowed"``);
* a ``.sig`` that is malformed, by an unknown signer, or does not match the source → refused
  **always**, even when unsigned plugins are allowed: a signature that fails means the file
  was changed after signing, and silently downgrading it to "unsigned" would hide that.

Unlike the original (reference §13 item 16), there is a signing path for Python plugins and
the same code verifies for the CLI, the runner and the worker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PluginError, PluginNotFoundError, PluginPathError, TrustError

if TYPE_CHECKING:
    from .config import TrustSettings
    from .plugins import PluginSpec

__all__ = ["check_trust", "default_signer", "generate_signing_key", "read_private_key",
           "resolve_plugin_path", "sign_plugin", "signature_path", "verify_signature",
           "write_key_pair"]

ALGORITHM = "ed25519"


# -- path rules (F12) ------------------------------------------------------------------------
def resolve_plugin_path(
    ref: str | os.PathLike[str], plugins_dir: str | os.PathLike[str], *, named_only: bool = False
) -> Path:
    """Turn a plugin reference into the real path of a ``.py`` file (F12).

    1. **User-given path** (only when ``named_only`` is false): if ``ref`` names an existing
       file — absolute, or relative to the cwd — *and* contains a path separator or ends in
       ``.py`` (``./orders.py``, ``plugins/orders.py``, ``/abs/p.py``, ``orders.py``), it is
       used as is: the caller could read that file anyway. It must be a regular ``.py`` file.
    2. **Plugin name** (everything else, and every ref when ``named_only`` is true — i.e. refs
       arriving over the wire): ``orders``, ``orders.py`` or ``sub/orders`` is looked up as
       ``<plugins_dir>/<ref>[.py]``. Refused with :class:`PluginPathError`: absolute refs, any
       ``..`` component, backslashes or NUL, and any ref whose real path (all symlinks resolved)
       is not inside the real path of ``plugins_dir``. Symlinks that stay inside are fine.

    Returns the fully resolved path; :class:`PluginError` if no such plugin exists.
    """
    text = os.fspath(ref)
    if not text or "\0" in text:
        raise PluginPathError(f"plugin ref {text!r}: empty or contains NUL")
    path_like = not named_only and (os.sep in text or "/" in text or text.endswith(".py"))
    if path_like:
        user = Path(text).expanduser()
        if user.exists():
            real = user.resolve()
            if real.suffix != ".py" or not real.is_file():
                raise PluginError(f"plugin ref {text!r}: {real} is not a regular .py file")
            return real
    if os.path.isabs(text) or text.startswith("~"):
        if not named_only:
            raise PluginNotFoundError(f"plugin file not found: {text}")
        raise PluginPathError(f"plugin ref {text!r}: absolute or '~' paths are not allowed "
                              f"here; name a plugin relative to {plugins_dir}")
    if "\\" in text:
        raise PluginPathError(f"plugin ref {text!r}: backslashes are not allowed in plugin names")
    if ".." in text.split("/"):
        raise PluginPathError(f"plugin ref {text!r}: '..' is not allowed in plugin names")
    base = Path(os.path.realpath(plugins_dir))
    rel = text if text.endswith(".py") else f"{text}.py"
    real = Path(os.path.realpath(base / rel))
    if not real.is_relative_to(base) or real == base:
        raise PluginPathError(f"plugin ref {text!r}: resolves outside the plugins directory "
                              f"{base} (symlink escape)")
    if real.suffix != ".py" or not real.is_file():
        if path_like:  # meant as a file in the cwd: say that first
            raise PluginNotFoundError(f"plugin file not found: {text} (nor a plugin {rel} "
                                      f"in {base})")
        raise PluginNotFoundError(f"plugin ref {text!r}: no plugin {rel} in {base}")
    return real


# -- signatures and trust (F13) -------------------------------------------------------------
def signature_path(plugin_path: str | os.PathLike[str]) -> Path:
    """Where the signature of ``plugin_path`` lives: the same name plus ``.sig``."""
    return Path(os.fspath(plugin_path) + ".sig")


def _b64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError) as exc:
        raise TrustError(f"{what}: not valid base64") from exc


def generate_signing_key() -> tuple[str, str]:
    """A new Ed25519 key pair as ``(private, public)``, each base64 of the 32 raw bytes.

    Keep the private key secret; put the public one in ``[trust.keys]``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def sign_plugin(path: str | os.PathLike[str], signer: str, private_key_b64: str) -> Path:
    """Sign the plugin's current bytes as ``signer``; write and return ``<path>.sig``.

    The file is replaced atomically, so a verifier never sees half a signature.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    plugin = Path(path)
    if not signer or signer.strip() != signer:
        raise TrustError(f"{plugin}: signer id {signer!r} must be non-empty without spaces "
                         "around it")
    try:
        raw = plugin.read_bytes()
    except OSError as exc:
        raise TrustError(f"{plugin}: cannot read plugin to sign: {exc.strerror or exc}") from exc
    try:
        key = Ed25519PrivateKey.from_private_bytes(_b64(private_key_b64, "private key"))
    except ValueError as exc:  # wrong length; TrustError (a ValueError) passes through too
        raise TrustError(f"{plugin}: private key is not a base64 raw Ed25519 key") from exc
    doc = {
        "signer": signer,
        "algorithm": ALGORITHM,
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "signature": base64.b64encode(key.sign(raw)).decode(),
    }
    target = signature_path(plugin)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _load_sig(sig: Path) -> dict[str, Any]:
    try:
        doc = json.loads(sig.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TrustError(f"{sig}: unreadable signature file: {type(exc).__name__}") from exc
    fields = ("signer", "algorithm", "source_sha256", "signature")
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in fields):
        raise TrustError(f"{sig}: malformed signature file: expected string fields "
                         f"{', '.join(fields)}")
    if doc["algorithm"] != ALGORITHM:
        raise TrustError(f"{sig}: unsupported signature algorithm {doc['algorithm']!r} "
                         f"(only {ALGORITHM})")
    return doc


def verify_signature(spec: PluginSpec, trust: TrustSettings) -> str | None:
    """The signer id if ``<plugin>.sig`` is a valid signature by an allowed signer; ``None``
    if there is no ``.sig``. A present but malformed, unknown-signer or non-matching
    signature raises :class:`TrustError` (one line, naming the file)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sig = signature_path(spec.path)
    if not sig.exists():
        return None
    doc = _load_sig(sig)
    signer = str(doc["signer"])
    raw = spec.source.encode("utf-8")
    digest = hashlib.sha256(raw).hexdigest()
    fix = f"re-sign it or remove {sig.name}"
    if digest != spec.source_hash or doc["source_sha256"] != digest:
        raise TrustError(f"{spec.path}: source does not match its signature by {signer!r} "
                         f"(modified after signing); {fix}")
    if signer not in trust.allowed_signers or signer not in trust.keys:
        raise TrustError(f"{spec.path}: signed by {signer!r}, who is not an allowed signer; add "
                         f"them to [trust] allowed_signers and [trust.keys], or remove {sig.name}")
    try:
        public = Ed25519PublicKey.from_public_bytes(
            _b64(trust.keys[signer], f"[trust.keys] {signer}"))
    except ValueError as exc:
        raise TrustError(f"{spec.path}: [trust.keys] {signer}: not a base64 raw Ed25519 "
                         "public key") from exc
    try:
        public.verify(_b64(doc["signature"], f"{sig}: signature"), raw)
    except InvalidSignature:
        raise TrustError(f"{spec.path}: invalid signature by {signer!r} (tampered plugin or "
                         f"signature, or wrong key); {fix}") from None
    return signer


def check_trust(spec: PluginSpec, trust: TrustSettings) -> str:
    """Apply the trust policy: ``"signed:<signer>"``, ``"unsigned-allowed"``, or
    :class:`TrustError`. A bad signature is refused even when unsigned plugins are allowed."""
    signer = verify_signature(spec, trust)
    if signer is not None:
        return f"signed:{signer}"
    if trust.allow_unsigned_python:
        return "unsigned-allowed"
    raise TrustError(
        f"{spec.path}: unsigned plugin refused by trust policy (allow_unsigned_python = false);"
        " sign it with `casparian plugin sign` (a key: `casparian plugin keygen`) or set"
        " [trust] allow_unsigned_python = true"
    )


# -- key files (``casparian plugin keygen``) -------------------------------------------------
def default_signer() -> str:
    """The signer id keygen uses when none is given: the login name, as a file-safe id."""
    import getpass

    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return safe or "local"


def write_key_pair(keys_dir: str | os.PathLike[str], signer: str) -> tuple[Path, Path]:
    """Make an Ed25519 key pair for ``signer`` in ``keys_dir`` (0700): ``<signer>.key``
    (0600, the private key) and ``<signer>.pub``. Refuses to replace an existing key: that
    would silently invalidate every plugin it signed."""
    if not signer or any(not (c.isalnum() or c in "-_.") for c in signer) or signer[0] == ".":
        raise TrustError(f"signer id {signer!r}: use letters, digits, '-', '_' and '.'")
    directory = Path(keys_dir)
    private_path, public_path = directory / f"{signer}.key", directory / f"{signer}.pub"
    if private_path.exists() or public_path.exists():
        raise TrustError(f"{private_path}: a key for signer {signer!r} already exists; "
                         "choose another --signer or remove the old pair first")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        private, public = generate_signing_key()
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(private + "\n")
        public_path.write_text(public + "\n", encoding="ascii")
    except OSError as exc:
        raise TrustError(f"cannot write key pair in {directory}: {exc.strerror or exc}") from exc
    return private_path, public_path


def read_private_key(path: str | os.PathLike[str]) -> str:
    """The base64 private key in ``path``; refused when other users can read the file."""
    key_path = Path(path)
    try:
        mode = key_path.stat().st_mode
        text = key_path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustError(f"{key_path}: cannot read private key: "
                         f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from exc
    if mode & 0o077:
        raise TrustError(f"{key_path}: private key is readable by other users; chmod 600 it")
    return text
