"""``casparian plugin schema PLUGIN``: the schema contract a plugin declares; ``--infer FILE``
runs it on FILE here and prints what it produced as an ``outputs`` manifest to paste into
the plugin (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import CasparianError
from ._app import EXIT_OK, App, recorded

__all__ = ["schema"]


@click.command("schema", short_help="Print a plugin's declared schema (or infer one).")
@click.argument("plugin_ref", metavar="PLUGIN")
@click.option("--infer", "infer_from", metavar="FILE", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run PLUGIN on FILE (in this process) and print the schema it produced as "
                   "an outputs manifest.")
@recorded("Plugin")
def schema(app: App, plugin_ref: str, infer_from: Path | None) -> int:
    """Print the schema contract PLUGIN declares (its literal ``outputs``), or with --infer
    the manifest matching what it produces on FILE.

    Example: casparian plugin schema plugins/orders.py --infer data/jan.csv
    """
    from .. import plugins

    spec = plugins.inspect_plugin(plugins.resolve_plugin_path(plugin_ref,
                                                              app.settings.plugins_dir))
    if infer_from is not None:
        plugins.check_trust(spec, app.settings.trust)
        print(_manifest_text(_infer(spec, infer_from)))
        return EXIT_OK
    print(f"{spec.name} {spec.version} ({spec.path})")
    if spec.contracts is None:
        print("  no outputs manifest: nothing is checked "
              "(casparian plugin schema PLUGIN --infer FILE prints one to paste)")
    for name, contract in sorted((spec.contracts or {}).items()):
        print(f"  output {name}" + ("" if contract.columns else ": declared, columns unchecked"))
        width = max((len(c.name) for c in contract.columns), default=0)
        type_width = max((len(c.type) for c in contract.columns), default=0)
        for c in contract.columns:
            flags = f"nullable: {'yes' if c.nullable else 'no'}"
            flags += "" if c.required else ", optional"
            print(f"    {c.name:<{width}}  {c.type:<{type_width}}  {flags}")
    if spec.quarantine is not None:
        q = spec.quarantine
        limits = [f"max_pct {q.max_pct:g}" if q.max_pct is not None else "",
                  f"max_rows {q.max_rows}" if q.max_rows is not None else ""]
        print(f"  quarantine limit: {', '.join(x for x in limits if x)}")
    app.response = {"count": len(spec.contracts or {})}
    return EXIT_OK


def _infer(spec: Any, path: Path) -> dict[str, Any]:
    """Run the plugin on ``path`` and describe each output's columns (helper columns left
    out). Batches of one output are unified; a column missing from some is not required."""
    import pyarrow as pa

    from .. import lineage, plugins
    from ..contracts import HELPER_COLUMNS, describe

    loaded = plugins.load_plugin(spec)
    ctx = plugins.JobContext(job_id="infer", input_path=str(path),
                             source_hash=lineage.hash_file(path), plugin_name=spec.name,
                             parser_version=spec.version)
    schemas: dict[str, list[pa.Schema]] = {}
    try:
        for out in plugins.call_parse(loaded, str(path), ctx):
            schemas.setdefault(out.name, []).append(out.data.schema)
    except CasparianError:
        raise
    except Exception as exc:  # the plugin's own failure: one line, like a job's
        raise CasparianError(f"{spec.path}: parse() raised {type(exc).__name__}: {exc}"
                             ) from exc
    manifest: dict[str, Any] = {}
    for name, found in schemas.items():
        unified = pa.unify_schemas(found, promote_options="permissive")
        columns = []
        for field in unified:
            if field.name in HELPER_COLUMNS:
                continue
            column: dict[str, Any] = {"name": field.name, "type": describe(field.type)}
            if any(field.name not in s.names for s in found):
                column["required"] = False
            columns.append(column)
        manifest[name] = {"columns": columns}
    return manifest


def _manifest_text(manifest: dict[str, Any]) -> str:
    """``outputs = {...}`` as Python source, one column a line."""
    lines = ["outputs = {"]
    for name, spec in manifest.items():
        lines.append(f'    {json.dumps(name)}: {{"columns": [')
        for column in spec["columns"]:
            items = ", ".join(f'"{k}": {_literal(v)}' for k, v in column.items())
            lines.append(f"        {{{items}}},")
        lines.append("    ]},")
    lines.append("}")
    return "\n".join(lines)


def _literal(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)
