"""Plugin signing: ``casparian plugin keygen``, ``plugin sign PLUGIN``, ``plugin verify PLUGIN``.

``keygen`` with no arguments makes the home's key pair (``<home>/keys/<signer>.key``, 0600, and
``<signer>.pub``) and every ``.pub`` there is trusted by that home, so keygen → sign → run
works with no config edit. Other signers' public keys go in ``[trust.keys]`` of config.toml.
What each setting guarantees is in docs/trust.md.
"""

from __future__ import annotations

from pathlib import Path

import click

from ._app import EXIT_FAILED, EXIT_OK, App, recorded

__all__ = ["keygen", "sign", "verify"]


@click.command(short_help="Make an Ed25519 key pair that this home trusts.")
@click.option("--signer", default=None, metavar="ID",
              help="Signer id (default: your login name).")
@recorded("Plugin")
def keygen(app: App, signer: str | None) -> int:
    """Make an Ed25519 signing key pair in the home's keys/ directory; the home trusts its
    public key from then on.

    Example: casparian plugin keygen then casparian plugin sign plugins/orders.py.
    """
    from .._signing import default_signer, write_key_pair

    settings = app.settings
    name = signer or default_signer()
    private, public = write_key_pair(settings.keys_dir, name)
    print(f"signer {name}: private key {private} (keep it secret), public key {public}")
    print(f"{settings.home} now trusts plugins signed by {name}")
    app.response = {"signer": name}
    return EXIT_OK


def _signing_key(keys_dir: Path, key: Path | None, signer: str | None) -> tuple[str, Path]:
    """(signer, private key file): the given ones, else the home's only key pair."""
    from ..errors import TrustError

    if key is not None:
        return signer or key.stem, key
    found = sorted(keys_dir.glob("*.key")) if keys_dir.is_dir() else []
    if signer is not None:
        found = [k for k in found if k.stem == signer]
    if len(found) == 1:
        return found[0].stem, found[0]
    if not found:
        raise TrustError(f"no signing key in {keys_dir}; make one with `casparian plugin keygen`"
                         " or pass --key FILE")
    raise TrustError(f"several signing keys in {keys_dir} "
                     f"({', '.join(k.stem for k in found)}); choose one with --signer")


@click.command(short_help="Sign a plugin file with the home's key.")
@click.argument("plugin", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Private key file (default: the home's only key).")
@click.option("--signer", default=None, metavar="ID",
              help="Signer id (default: the key file's name).")
@recorded("Plugin")
def sign(app: App, plugin: Path, key: Path | None, signer: str | None) -> int:
    """Sign PLUGIN's current bytes; writes PLUGIN.sig beside it. Editing the plugin
    afterwards makes the signature fail until it is signed again.

    Example: casparian plugin sign plugins/orders.py
    """
    from .._signing import read_private_key, resolve_plugin_path, sign_plugin

    settings = app.settings
    path = resolve_plugin_path(plugin, settings.plugins_dir)
    name, key_path = _signing_key(settings.keys_dir, key, signer)
    sig = sign_plugin(path, name, read_private_key(key_path))
    print(f"signed {path} as {name}: {sig}")
    app.response = {"signer": name}
    return EXIT_OK


@click.command(short_help="Check a plugin against the home's trust policy.")
@click.argument("plugin", type=click.Path(dir_okay=False, path_type=Path))
@recorded("Plugin", creates_home=False)
def verify(app: App, plugin: Path) -> int:
    """Say whether PLUGIN may run under the home's trust policy, and why; exit 1 if not.

    Example: casparian plugin verify plugins/orders.py
    """
    from .._signing import resolve_plugin_path
    from ..errors import TrustError
    from ..plugins import check_trust, inspect_plugin

    settings = app.settings
    spec = inspect_plugin(resolve_plugin_path(plugin, settings.plugins_dir))
    try:
        verdict = check_trust(spec, settings.trust)
    except TrustError as exc:
        print(f"refused: {exc}")
        app.response = {"verdict": "refused"}
        return EXIT_FAILED
    if verdict.startswith("signed:"):
        print(f"ok: {spec.path} is signed by {verdict.split(':', 1)[1]}, a trusted signer")
    else:
        print(f"ok: {spec.path} is unsigned, allowed because [trust] allow_unsigned_python = "
              "true (the default for a single-user home)")
    app.response = {"verdict": verdict}
    return EXIT_OK
