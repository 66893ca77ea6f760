"""casparian_nb.plugins: plugin API, static inspection, path rules (F12), trust (F13), loading
and the normalisation of parse() results. Real files in tmp_path; nothing is mocked."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import pickle
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from casparian_nb.config import TrustSettings
from casparian_nb.errors import (
    OutputNameError,
    PermanentError,
    PluginError,
    PluginNotFoundError,
    PluginPathError,
    PluginReturnError,
    TransientError,
    TrustError,
)
from casparian_nb.plugins import (
    OUTPUT_NAME_RE,
    JobContext,
    LoadedPlugin,
    Output,
    PluginSpec,
    call_parse,
    check_trust,
    generate_signing_key,
    inspect_plugin,
    load_plugin,
    resolve_plugin_path,
    sign_plugin,
    to_arrow,
    verify_signature,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "plugins" / "fixture_plugin.py"


def write(tmp_path: Path, body: str, name: str = "plug.py") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def one_line_naming(exc: BaseException, what: object) -> str:
    """Assert the error message is one line and names ``what``; return it."""
    msg = str(exc)
    assert "\n" not in msg, msg
    assert str(what) in msg, msg
    return msg


def ctx_for(plugin: LoadedPlugin, input_path: str = "in.csv") -> JobContext:
    return JobContext(job_id="run-1", input_path=input_path, source_hash="0" * 64,
                      plugin_name=plugin.spec.name, parser_version=plugin.spec.version)


def run(tmp_path: Path, body: str, input_path: str = "in.csv") -> list[Output]:
    plugin = load_plugin(inspect_plugin(write(tmp_path, body)))
    return list(call_parse(plugin, input_path, ctx_for(plugin, input_path)))


# -- Output names --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "orders", "orders_2024", "x9_"])
def test_valid_output_names(name: str) -> None:
    assert OUTPUT_NAME_RE.fullmatch(name)
    assert Output(name, pa.table({"a": [1]}), table=name).name == name


@pytest.mark.parametrize("bad", ["", "Orders", "1abc", "a-b", "_x", "a b", "ünï", "a\n"])
def test_invalid_output_names_are_refused_naming_name_and_rule(bad: str) -> None:
    with pytest.raises(OutputNameError) as info:
        Output(bad, pa.table({"a": [1]}))
    msg = one_line_naming(info.value, repr(bad))
    assert "[a-z][a-z0-9_]*" in msg


def test_invalid_table_name_and_none_data() -> None:
    with pytest.raises(OutputNameError, match="'Bad-Table'"):
        Output("ok", pa.table({"a": [1]}), table="Bad-Table")
    with pytest.raises(PluginError, match="data is None"):
        Output("ok", None)
    with pytest.raises(OutputNameError):
        Output(123, pa.table({"a": [1]}))  # type: ignore[arg-type]


# -- static inspection ---------------------------------------------------------------------
def test_inspect_reads_literal_metadata_without_executing(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = write(tmp_path, f"""\
        open({str(marker)!r}, "w").close()
        name = "orders"
        version: str = "2.1.0"
        TOPIC = "order_rows"
        outputs = {{"order_rows": {{"columns": [{{"name": "id", "type": "int64"}}]}},
                   "order_errors": {{"columns": []}}}}
        def parse(path, ctx=None):
            return None
        """)
    spec = inspect_plugin(str(path))
    assert not marker.exists()
    assert spec.path == path.resolve() and spec.path.is_absolute()
    assert (spec.name, spec.version, spec.default_output) == ("orders", "2.1.0", "order_rows")
    assert spec.manifest is not None and set(spec.manifest) == {"order_rows", "order_errors"}
    assert spec.manifest["order_rows"]["columns"][0]["type"] == "int64"
    assert spec.source == path.read_text(encoding="utf-8")
    assert spec.source_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert spec.takes_ctx is True
    assert spec.name_declared is True


def test_inspect_defaults(tmp_path: Path) -> None:
    spec = inspect_plugin(write(tmp_path, "def parse(path):\n    pass\n", "my-parser.py"))
    assert (spec.name, spec.version, spec.default_output) == ("my-parser", "0.0.0", "output")
    assert spec.manifest is None and spec.takes_ctx is False
    assert spec.name_declared is False  # the name is the file stem: tapes hash it


def test_a_declared_name_equal_to_the_stem_is_still_declared(tmp_path: Path) -> None:
    spec = inspect_plugin(write(tmp_path, 'name = "orders"\ndef parse(p): pass\n', "orders.py"))
    assert spec.name == "orders" and spec.name_declared is True


def test_default_output_falls_back_to_name_then_topic_wins(tmp_path: Path) -> None:
    spec = inspect_plugin(write(tmp_path, 'name = "trades"\ndef parse(p): pass\n'))
    assert spec.default_output == "trades"
    spec = inspect_plugin(write(tmp_path, 'name = "trades"\nOUTPUTS = {"fills": {}}\n'
                                          'TOPIC = "fills"\ndef parse(p): pass\n'))
    assert spec.default_output == "fills" and spec.manifest == {"fills": {}}


def test_invalid_default_output_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "Orders V2"\ndef parse(p): pass\n')
    with pytest.raises(OutputNameError) as info:
        inspect_plugin(path)
    assert "'Orders V2'" in one_line_naming(info.value, path)


@pytest.mark.parametrize(("signature", "takes_ctx"), [
    ("path", False), ("path, ctx=None", True), ("path, ctx", True), ("*args", True),
    ("path, /, ctx=None", True), ("path, *, debug=False", False), ("path, ctx=None, x=1", True),
])
def test_takes_ctx(tmp_path: Path, signature: str, takes_ctx: bool) -> None:
    spec = inspect_plugin(write(tmp_path, f"def parse({signature}):\n    pass\n"))
    assert spec.takes_ctx is takes_ctx


@pytest.mark.parametrize(("body", "expected"), [
    ("x = 1\n\n\ndef parse(p:\n    pass\n", "line 4: syntax error: "),
    ("def helper(p):\n    pass\n", "no module-level parse(path, ctx=None) function"),
    ("class C:\n    def parse(self, p): pass\n", "no module-level parse(path, ctx=None) function"),
    ("def parse():\n    pass\n", "line 1: parse() takes no parameters"),
    ("def parse(a, b, c):\n    pass\n", "parse() requires 3 arguments"),
    ("def parse(p, *, mode):\n    pass\n", "required keyword-only parameter(s) mode"),
    ("async def parse(p):\n    pass\n", "must be a plain function, not async"),
    ("import json\noutputs = json.loads('{}')\ndef parse(p): pass\n",
     "line 2: outputs must be a literal"),
    ("version = 1.0\ndef parse(p): pass\n", "line 1: version must be a non-empty, single-line"),
    ("name = 'a\\nb'\ndef parse(p): pass\n", "line 1: name must be a non-empty, single-line"),
    ("name = get_name()\ndef parse(p): pass\n", "line 1: name must be a literal"),
    ("outputs = ['a']\ndef parse(p): pass\n", "outputs must be a dict"),
    ("outputs = {'a': 1}\ndef parse(p): pass\n", "outputs['a'] must be a dict"),
    ("outputs = {}\nOUTPUTS = {}\ndef parse(p): pass\n", "defines both outputs and OUTPUTS"),
])
def test_inspect_errors_are_one_line_and_name_the_file(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(PluginError) as info:
        inspect_plugin(path)
    msg = one_line_naming(info.value, path.resolve())
    assert msg.startswith(f"{path.resolve()}: ") and expected in msg, msg


def test_bad_manifest_output_name_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'x = 1\noutputs = {"Bad-Name": {}}\ndef parse(p): pass\n')
    with pytest.raises(OutputNameError) as info:
        inspect_plugin(path)
    assert "line 2" in one_line_naming(info.value, path) and "'Bad-Name'" in str(info.value)


def test_inspect_file_problems(tmp_path: Path) -> None:
    for path, expected in [
        (tmp_path / "missing.py", "plugin file not found"),
        (write(tmp_path, "def parse(p): pass\n", "plug.txt"), "not a .py file"),
    ]:
        with pytest.raises(PluginError) as info:
            inspect_plugin(path)
        assert expected in one_line_naming(info.value, path)
    (tmp_path / "dir.py").mkdir()
    with pytest.raises(PluginError, match="not a regular file"):
        inspect_plugin(tmp_path / "dir.py")
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"# caf\xe9\ndef parse(p): pass\n")
    with pytest.raises(PluginError, match="not UTF-8"):
        inspect_plugin(latin)


# -- path rules (F12) ----------------------------------------------------------------------
@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    d = tmp_path / "home" / "plugins"
    write(d, "def parse(p): pass\n", "orders.py")
    write(d, "def parse(p): pass\n", "sub/orders.py")
    return d


@pytest.mark.parametrize(("ref", "rel"), [
    ("orders", "orders.py"), ("orders.py", "orders.py"), ("sub/orders", "sub/orders.py"),
    ("./sub/orders.py", "sub/orders.py"),
])
def test_names_resolve_under_plugins_dir(
    plugins_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str, rel: str
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing named like the ref exists in the cwd
    for named_only in (False, True):
        got = resolve_plugin_path(ref, plugins_dir, named_only=named_only)
        assert got == (plugins_dir / rel).resolve()


def test_user_given_paths_relative_and_absolute(
    plugins_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = write(tmp_path / "work", "def parse(p): pass\n", "orders.py")
    monkeypatch.chdir(tmp_path / "work")
    # an existing ./orders.py in the cwd wins over the plugins dir: it is what the user typed
    assert resolve_plugin_path("orders.py", plugins_dir) == mine.resolve()
    assert resolve_plugin_path(Path("./orders.py"), plugins_dir) == mine.resolve()
    assert resolve_plugin_path(str(mine), plugins_dir) == mine.resolve()
    # a bare name without .py still means the plugins dir
    assert resolve_plugin_path("orders", plugins_dir) == (plugins_dir / "orders.py").resolve()
    # user paths may leave the plugins dir, e.g. ../
    other = write(tmp_path, "def parse(p): pass\n", "other.py")
    assert resolve_plugin_path("../other.py", plugins_dir) == other.resolve()
    (tmp_path / "work" / "notes.txt").write_text("x")
    with pytest.raises(PluginError, match=r"not a regular \.py file"):
        resolve_plugin_path("./notes.txt", plugins_dir)
    with pytest.raises(PluginNotFoundError, match=r"^plugin file not found: ") as info:
        resolve_plugin_path(str(tmp_path / "nope.py"), plugins_dir)
    assert not isinstance(info.value, PluginPathError)
    assert isinstance(info.value, FileNotFoundError)
    # a relative path that is neither a file nor a plugin name says "file" first
    with pytest.raises(PluginNotFoundError, match=r"^plugin file not found: nope\.py \(nor a"):
        resolve_plugin_path("nope.py", plugins_dir)


@pytest.mark.parametrize("ref", [
    "../orders", "../../etc/passwd", "sub/../../x.py", "..", "sub/..", "a\\..\\b", "x\0y",
])
def test_traversal_refused(
    plugins_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str
) -> None:
    write(tmp_path / "home", "def parse(p): pass\n", "orders.py")  # a real target for ../orders
    monkeypatch.chdir(tmp_path)  # nothing matches these refs relative to the cwd
    for named_only in (False, True):
        with pytest.raises(PluginPathError) as info:
            resolve_plugin_path(ref, plugins_dir, named_only=named_only)
        one_line_naming(info.value, repr(ref))


def test_wire_refs_ignore_files_in_the_cwd(
    plugins_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "def parse(p): pass\n", "secret.py")
    monkeypatch.chdir(plugins_dir)
    secret = (tmp_path / "secret.py").resolve()
    assert resolve_plugin_path("../../secret.py", plugins_dir) == secret
    with pytest.raises(PluginPathError, match=r"'\.\.' is not allowed"):
        resolve_plugin_path("../../secret.py", plugins_dir, named_only=True)


def test_absolute_and_home_refs_refused_when_named_only(plugins_dir: Path) -> None:
    target = plugins_dir / "orders.py"
    for ref in (str(target), "~/orders.py", "~"):
        with pytest.raises(PluginPathError) as info:
            resolve_plugin_path(ref, plugins_dir, named_only=True)
        assert isinstance(info.value, PermissionError)
        one_line_naming(info.value, repr(ref))


def test_symlink_escape_refused(plugins_dir: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside", "def parse(p): pass\n", "evil.py")
    (plugins_dir / "evil.py").symlink_to(outside)
    (plugins_dir / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    (plugins_dir / "dangling.py").symlink_to(tmp_path / "outside" / "missing.py")
    for ref in ("evil", "evil.py", "linkdir/evil", "dangling"):
        for named_only in (False, True):
            with pytest.raises(PluginPathError, match="outside the plugins directory"):
                resolve_plugin_path(ref, plugins_dir, named_only=named_only)


def test_symlinks_inside_plugins_dir_are_fine(plugins_dir: Path, tmp_path: Path) -> None:
    (plugins_dir / "alias.py").symlink_to(plugins_dir / "sub" / "orders.py")
    assert resolve_plugin_path("alias", plugins_dir, named_only=True) == \
        (plugins_dir / "sub" / "orders.py").resolve()
    # the plugins dir itself may be reached through a symlink (e.g. a symlinked home)
    link_home = tmp_path / "link_plugins"
    link_home.symlink_to(plugins_dir, target_is_directory=True)
    assert resolve_plugin_path("orders", link_home, named_only=True) == \
        (plugins_dir / "orders.py").resolve()


def test_missing_named_plugin_is_not_found(plugins_dir: Path) -> None:
    with pytest.raises(PluginError, match=r"no plugin nope\.py in") as info:
        resolve_plugin_path("nope", plugins_dir, named_only=True)
    assert not isinstance(info.value, PluginPathError)
    one_line_naming(info.value, "'nope'")


# -- trust (F13) ---------------------------------------------------------------------------
@pytest.fixture
def keys() -> dict[str, tuple[str, str]]:
    return {"alice": generate_signing_key(), "bob": generate_signing_key()}


def trust(keys: dict[str, tuple[str, str]], allow: bool, *signers: str) -> TrustSettings:
    return TrustSettings(allow_unsigned_python=allow, allowed_signers=signers,
                         keys={s: keys[s][1] for s in signers})


def test_generate_signing_key_is_raw_base64() -> None:
    private, public = generate_signing_key()
    assert len(base64.b64decode(private)) == 32 and len(base64.b64decode(public)) == 32
    assert generate_signing_key() != (private, public)


def test_sign_and_verify_round_trip(tmp_path: Path, keys: dict[str, tuple[str, str]]) -> None:
    path = write(tmp_path, "def parse(p): pass\n")
    sig = sign_plugin(path, "alice", keys["alice"][0])
    assert sig == tmp_path / "plug.py.sig"
    doc = json.loads(sig.read_text())
    assert set(doc) == {"signer", "algorithm", "source_sha256", "signature"}
    assert doc["algorithm"] == "ed25519" and doc["signer"] == "alice"
    assert doc["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    spec = inspect_plugin(path)
    policy = trust(keys, False, "alice")
    assert verify_signature(spec, policy) == "alice"
    assert check_trust(spec, policy) == "signed:alice"


def test_tampered_plugin_refused_even_when_unsigned_allowed(
    tmp_path: Path, keys: dict[str, tuple[str, str]]
) -> None:
    path = write(tmp_path, "def parse(p): return None\n")
    sign_plugin(path, "alice", keys["alice"][0])
    path.write_text("import shutil\ndef parse(p): return None\n")
    spec = inspect_plugin(path)
    for allow in (True, False):
        with pytest.raises(TrustError, match="modified after signing") as info:
            check_trust(spec, trust(keys, allow, "alice"))
        one_line_naming(info.value, path)
    # an attacker who also fixes up source_sha256 still cannot forge the signature
    sig = tmp_path / "plug.py.sig"
    doc = json.loads(sig.read_text())
    doc["source_sha256"] = spec.source_hash
    sig.write_text(json.dumps(doc))
    with pytest.raises(TrustError, match="invalid signature by 'alice'"):
        check_trust(spec, trust(keys, True, "alice"))


def test_unsigned_refused_or_allowed_by_policy(
    tmp_path: Path, keys: dict[str, tuple[str, str]]
) -> None:
    path = write(tmp_path, "def parse(p): pass\n")
    spec = inspect_plugin(path)
    assert verify_signature(spec, trust(keys, False, "alice")) is None
    assert check_trust(spec, trust(keys, True)) == "unsigned-allowed"
    with pytest.raises(TrustError) as info:
        check_trust(spec, trust(keys, False, "alice"))
    assert str(info.value) == (
        f"{spec.path}: unsigned plugin refused by trust policy (allow_unsigned_python = false);"
        " sign it with `casparian plugin sign` (a key: `casparian plugin keygen`) or set"
        " [trust] allow_unsigned_python = true")
    assert isinstance(info.value, PermissionError)


def test_unknown_or_impersonated_signer_refused(
    tmp_path: Path, keys: dict[str, tuple[str, str]]
) -> None:
    path = write(tmp_path, "def parse(p): pass\n")
    sign_plugin(path, "bob", keys["bob"][0])
    spec = inspect_plugin(path)
    with pytest.raises(TrustError, match="signed by 'bob', who is not an allowed signer") as info:
        check_trust(spec, trust(keys, True, "alice"))
    one_line_naming(info.value, path)
    sign_plugin(path, "alice", keys["bob"][0])  # bob's key, claiming to be alice
    with pytest.raises(TrustError, match="invalid signature by 'alice'"):
        check_trust(inspect_plugin(path), trust(keys, True, "alice"))


@pytest.mark.parametrize("content", [
    "not json", "[]", '{"signer": "alice"}',
    '{"signer": "alice", "algorithm": "rsa", "source_sha256": "", "signature": ""}',
])
def test_malformed_signature_file_refused(
    tmp_path: Path, keys: dict[str, tuple[str, str]], content: str
) -> None:
    path = write(tmp_path, "def parse(p): pass\n")
    (tmp_path / "plug.py.sig").write_text(content)
    with pytest.raises(TrustError) as info:
        check_trust(inspect_plugin(path), trust(keys, True, "alice"))
    one_line_naming(info.value, path)


def test_sign_plugin_rejects_bad_inputs(tmp_path: Path) -> None:
    path = write(tmp_path, "def parse(p): pass\n")
    with pytest.raises(TrustError, match="private key"):
        sign_plugin(path, "alice", base64.b64encode(b"short").decode())
    with pytest.raises(TrustError, match="signer id"):
        sign_plugin(path, " alice", generate_signing_key()[0])
    assert not (tmp_path / "plug.py.sig").exists()


# -- loading -------------------------------------------------------------------------------
def test_load_plugin_fresh_module(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        import dataclasses
        import pyarrow as pa
        from casparian_nb import Output, PermanentError, TransientError
        name = "loader"
        calls = []
        @dataclasses.dataclass
        class Row:
            x: int
        def parse(path):
            calls.append(path)
            return [Output("rows", pa.table({"x": [1]}))]
        """)
    spec = inspect_plugin(path)
    first, second = load_plugin(spec), load_plugin(spec)
    mod = first.module.__name__
    assert mod == f"casparian_plugin_loader_{spec.source_hash[:8]}"
    assert first.module.__file__ == str(spec.path)
    assert first.module is not second.module and sys.modules[mod] is second.module
    list(call_parse(first, "a", ctx_for(first)))
    assert first.module.calls == ["a"] and second.module.calls == []
    row = second.module.Row(3)
    assert pickle.loads(pickle.dumps(row)) == row


def test_import_error_is_chained_plugin_error(tmp_path: Path) -> None:
    path = write(tmp_path, "import no_such_module_xyz\ndef parse(p): pass\n")
    spec = inspect_plugin(path)
    with pytest.raises(PluginError) as info:
        load_plugin(spec)
    msg = one_line_naming(info.value, path)
    assert "import failed: ModuleNotFoundError: No module named 'no_such_module_xyz'" in msg
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert not any(m.startswith("casparian_plugin_plug_") for m in sys.modules)


def test_retry_choice_at_import_propagates(tmp_path: Path) -> None:
    path = write(tmp_path, "from casparian_nb import TransientError\n"
                           "raise TransientError('db down')\ndef parse(p): pass\n")
    with pytest.raises(TransientError, match="db down"):
        load_plugin(inspect_plugin(path))


def test_changed_on_disk_since_inspection(tmp_path: Path) -> None:
    path = write(tmp_path, "def parse(p): pass\n")
    spec = inspect_plugin(path)
    path.write_text("def parse(p): return 1\n")
    with pytest.raises(PluginError, match="changed on disk since inspection") as info:
        load_plugin(spec)
    one_line_naming(info.value, path)


def test_parse_rebound_to_non_callable(tmp_path: Path) -> None:
    path = write(tmp_path, "def parse(p): pass\nparse = 3\n")
    with pytest.raises(PluginError, match="parse is not callable"):
        load_plugin(inspect_plugin(path))


# -- to_arrow and call_parse ---------------------------------------------------------------
class CStream:
    """A foreign table exposing only the Arrow PyCapsule stream interface."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self._table.__arrow_c_stream__(requested_schema)


EXPECTED = pa.table({"a": [1, 2]})


@pytest.mark.parametrize("data", [
    EXPECTED, EXPECTED.to_batches()[0], pd.DataFrame({"a": [1, 2]}, index=[7, 8]),
    pl.DataFrame({"a": [1, 2]}), CStream(EXPECTED),
], ids=["table", "batch", "pandas", "polars", "c_stream"])
def test_to_arrow_accepts_table_likes(data: Any) -> None:
    got = to_arrow(data, output="o")
    assert isinstance(got, pa.Table)
    assert got.column_names == ["a"] and got.column("a").to_pylist() == [1, 2]


def test_to_arrow_rejects_other_types() -> None:
    with pytest.raises(PluginReturnError) as info:
        to_arrow({"a": [1]}, output="orders")
    assert str(info.value) == ("output 'orders': expected a pandas/polars DataFrame or "
                               "pyarrow Table, got dict")
    with pytest.raises(PluginReturnError, match="cannot convert DataFrame"):
        to_arrow(pd.DataFrame({"a": [1, "x"]}), output="orders")


PRELUDE = """\
import pandas as pd, polars as pl, pyarrow as pa
from casparian_nb import Output
TOPIC = "main"
T = pa.table({"a": [1, 2]})
"""


@pytest.mark.parametrize(("ret", "expected"), [
    ("T", [("main", None)]),
    ("T.to_batches()[0]", [("main", None)]),
    ("pd.DataFrame({'a': [1, 2]})", [("main", None)]),
    ("pl.DataFrame({'a': [1, 2]})", [("main", None)]),
    ("Output('x', T)", [("x", None)]),
    ("[Output('x', T), Output('y', pl.DataFrame({'a': [1, 2]}), table='y_v2')]",
     [("x", None), ("y", "y_v2")]),
    ("(Output('x', pd.DataFrame({'a': [1, 2]})),)", [("x", None)]),
    ("[]", []),
    ("None", []),
    ("(b for b in [T, Output('x', T)])", [("main", None), ("x", None)]),
    ("iter([pd.DataFrame({'a': [1, 2]})])", [("main", None)]),
    ("pa.RecordBatchReader.from_batches(T.schema, T.to_batches())", [("main", None)]),
    ("pa.RecordBatchReader.from_batches(T.schema, T.to_batches() * 2)",
     [("main", None), ("main", None)]),
])
def test_call_parse_normalises_return_shapes(
    tmp_path: Path, ret: str, expected: list[tuple[str, str | None]]
) -> None:
    outs = run(tmp_path, PRELUDE + f"def parse(path):\n    return {ret}\n")
    assert [(o.name, o.table) for o in outs] == expected
    for o in outs:
        assert isinstance(o.data, pa.Table) and o.data.column("a").to_pylist() == [1, 2]


@pytest.mark.parametrize(("ret", "type_name"), [
    ("'a string'", "str"), ("{'not': 'a table'}", "dict"), ("42", "int"),
    ("[pd.DataFrame({'a': [1]})]", "list[DataFrame]"),
    ("[Output('x', T), T]", "list[Output | Table]"), ("{1, 2}", "set"),
    ("pl.LazyFrame({'a': [1]})", "LazyFrame"),
])
def test_bad_returns_name_the_type(tmp_path: Path, ret: str, type_name: str) -> None:
    with pytest.raises(PluginReturnError) as info:
        run(tmp_path, PRELUDE + f"def parse(path):\n    return {ret}\n")
    msg = one_line_naming(info.value, tmp_path / "plug.py")
    assert f"parse() returned {type_name}; return a table, a list of Output, None, or yield " \
           "Output batches" in msg


def test_bad_yield_names_the_type(tmp_path: Path) -> None:
    with pytest.raises(PluginReturnError) as info:
        run(tmp_path, PRELUDE + "def parse(path):\n    yield Output('x', T)\n    yield 'oops'\n")
    assert "parse() yielded str; " in one_line_naming(info.value, tmp_path / "plug.py")
    with pytest.raises(PluginReturnError) as info:
        run(tmp_path, PRELUDE + "def parse(path):\n    return [Output('x', {'a': 1})]\n")
    msg = one_line_naming(info.value, tmp_path / "plug.py")
    assert msg.endswith("output 'x': expected a pandas/polars DataFrame or pyarrow Table, got dict")


def test_generators_stay_lazy(tmp_path: Path) -> None:
    plugin = load_plugin(inspect_plugin(write(tmp_path, PRELUDE + textwrap.dedent("""\
        produced = []
        def parse(path):
            for i in range(3):
                produced.append(i)
                yield Output("rows", pa.table({"i": [i]}))
        """))))
    produced = plugin.module.produced
    outs = call_parse(plugin, "in", ctx_for(plugin))
    assert produced == []
    first = next(outs)
    assert first.data.column("i").to_pylist() == [0] and produced == [0]
    assert [o.data.column("i")[0].as_py() for o in outs] == [1, 2] and produced == [0, 1, 2]


def test_ctx_is_passed_only_when_accepted(tmp_path: Path) -> None:
    seen: list[Any] = []
    plugin = load_plugin(inspect_plugin(write(tmp_path, "def parse(path, ctx=None):\n"
                                                        "    SEEN.append((path, ctx))\n")))
    plugin.module.__dict__["SEEN"] = seen
    ctx = ctx_for(plugin, "data.csv")
    assert list(call_parse(plugin, "data.csv", ctx)) == [] and seen == [("data.csv", ctx)]
    assert ctx.logger.name == "casparian_nb.plugin.plug"
    custom = logging.getLogger("custom")
    assert JobContext("j", "p", "h", "n", "1", logger=custom).logger is custom
    plugin = load_plugin(inspect_plugin(write(tmp_path, "def parse(*args):\n"
                                                        "    SEEN.append(args)\n", "v.py")))
    plugin.module.__dict__["SEEN"] = seen
    list(call_parse(plugin, "x", ctx))
    assert seen[-1] == ("x", ctx)


def test_plugin_exceptions_propagate_unchanged(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="missing"):
        run(tmp_path, "def parse(path):\n    raise KeyError('missing')\n")
    plugin = load_plugin(inspect_plugin(write(tmp_path, PRELUDE + textwrap.dedent("""\
        def parse(path):
            yield T
            raise ZeroDivisionError("late")
        """), "gen.py")))
    outs = call_parse(plugin, "in", ctx_for(plugin))
    next(outs)
    with pytest.raises(ZeroDivisionError, match="late"):
        next(outs)


# -- the fixture plugin --------------------------------------------------------------------
@pytest.fixture
def fixture_plugin() -> LoadedPlugin:
    spec = inspect_plugin(FIXTURE)
    return load_plugin(spec)


def run_fixture(plugin: LoadedPlugin, input_path: Path) -> list[Output]:
    return list(call_parse(plugin, str(input_path), ctx_for(plugin, str(input_path))))


def test_fixture_plugin_metadata() -> None:
    spec: PluginSpec = inspect_plugin(FIXTURE)
    assert (spec.name, spec.version, spec.default_output) == \
        ("fixture_plugin", "1.0.0", "fixture_plugin")
    assert spec.manifest == {"fixture_output": {"columns": [
        {"name": "id", "type": "int64"}, {"name": "value", "type": "string"}]}}
    assert spec.takes_ctx


def test_fixture_normal_and_env_knobs(
    fixture_plugin: LoadedPlugin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "in.csv"
    data.write_text("a,b\n")
    [out] = run_fixture(fixture_plugin, data)
    assert out.name == "fixture_output" and out.data.num_rows == 10
    assert out.data.to_pydict() == {"id": list(range(10)),
                                    "value": [f"value_{i}" for i in range(10)]}
    monkeypatch.setenv("CF_FIXTURE_ROWS", "3")
    monkeypatch.setenv("CF_FIXTURE_MODE", "collision")
    [out] = run_fixture(fixture_plugin, data)
    assert out.data.column_names == ["id", "value", "_cf_job_id"] and out.data.num_rows == 3


@pytest.mark.parametrize(("mode", "exc", "match"), [
    ("error", RuntimeError, "^Fixture error$"),
    ("transient", TransientError, "transient"),
    ("permanent", PermanentError, "permanent"),
    ("bad-return", PluginReturnError, "returned dict"),
    ("no-such-mode", PermanentError, "unknown fixture mode"),
])
def test_fixture_failure_modes(
    fixture_plugin: LoadedPlugin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    mode: str, exc: type[BaseException], match: str,
) -> None:
    monkeypatch.setenv("CF_FIXTURE_MODE", mode)
    with pytest.raises(exc, match=match):
        run_fixture(fixture_plugin, tmp_path / "missing-input.csv")


def test_fixture_first_line_overrides_env(
    fixture_plugin: LoadedPlugin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CF_FIXTURE_MODE", "error")
    data = tmp_path / "ok.txt"
    data.write_text("mode=normal rows=4\nrest of file\n")
    [out] = run_fixture(fixture_plugin, data)
    assert out.data.num_rows == 4
    data.write_text("mode=error rows=1 msg=boom on file 3\n")
    monkeypatch.setenv("CF_FIXTURE_MODE", "normal")
    with pytest.raises(RuntimeError, match=r"^boom on file 3$"):
        run_fixture(fixture_plugin, data)


def test_fixture_slow_quarantine_and_big(
    fixture_plugin: LoadedPlugin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "in.txt"
    data.write_text("mode=slow sleep=0.1 rows=2\n")
    [out] = run_fixture(fixture_plugin, data)
    assert out.data.num_rows == 2

    data.write_text("mode=quarantine rows=7\n")
    [out] = run_fixture(fixture_plugin, data)
    assert out.data.column("_cf_row_error").to_pylist() == [
        None, None, "bad value in row 2", None, None, "bad value in row 5", None]
    assert out.data.column("__cf_row_id").to_pylist() == list(range(1, 8))

    monkeypatch.setenv("CF_FIXTURE_MODE", "big")
    monkeypatch.setenv("CF_FIXTURE_ROWS", "25")
    monkeypatch.setenv("CF_FIXTURE_BATCH", "10")
    outs = call_parse(fixture_plugin, str(tmp_path / "x"), ctx_for(fixture_plugin))
    assert not isinstance(outs, list)
    sizes = [o.data.num_rows for o in outs]
    assert sizes == [10, 10, 5]
