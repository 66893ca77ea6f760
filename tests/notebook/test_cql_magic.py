"""``%load_ext casparian_nb`` and ``%%cql`` in a real IPython shell."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from IPython.core.interactiveshell import InteractiveShell

from casparian_nb.config import Settings
from casparian_nb.notebook._reprs import QueryResult


@pytest.fixture
def shell(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A fresh in-process IPython shell with the extension loaded, over the tmp home."""
    monkeypatch.setenv("CASPARIAN_HOME", str(settings.home))
    sh = InteractiveShell()
    result = sh.run_cell("%load_ext casparian_nb")
    assert result.success, result.error_in_exec
    yield sh
    sh.run_cell("%reset -f")
    sh.cleanup()
    InteractiveShell.clear_instance()


def _orders(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [1, 2, 3], "amount": [5.0, 150.0, 300.0]}),
                   out / f"orders_{'0' * 16}.parquet")


def test_cql_runs_sql_over_the_home_without_a_controller(shell: InteractiveShell,
                                                         settings: Settings) -> None:
    """No sentinel, no controller: %%cql reads $CASPARIAN_HOME's outputs."""
    _orders(settings.output_dir)
    result = shell.run_cell("%%cql\nselect count(*) as n from orders\n")
    assert result.success, result.error_in_exec
    assert isinstance(result.result, QueryResult)
    assert result.result.df["n"][0] == 3
    html = result.result._repr_html_()
    assert "1 row" in html and "<table" in html


def test_cql_assigns_the_dataframe(shell: InteractiveShell, settings: Settings) -> None:
    _orders(settings.output_dir)
    result = shell.run_cell("%%cql big <<\nselect id from orders where amount > 100 order by id\n")
    assert result.success, result.error_in_exec
    assert shell.user_ns["big"]["id"].tolist() == [2, 3]
    assert "2 rows" in repr(result.result)


def test_cql_unknown_table_error_lists_known_tables(shell: InteractiveShell,
                                                    settings: Settings) -> None:
    _orders(settings.output_dir)
    result = shell.run_cell("%%cql\nselect * from ordes\n")
    assert not result.success
    text = str(result.error_in_exec)
    assert "ordes" in text and "orders" in text and "jobs" in text


def test_cql_does_not_take_jupysql_names(shell: InteractiveShell) -> None:
    """Only the cell magic ``cql`` is ours: ``%sql``/``%%sql`` stay free for jupysql."""
    magics = shell.magics_manager.magics
    assert "cql" in magics["cell"]
    assert "sql" not in magics["cell"] and "sql" not in magics["line"]


def test_bad_magic_line_is_a_clear_error(shell: InteractiveShell) -> None:
    result = shell.run_cell("%%cql df <\nselect 1\n")
    assert not result.success
    assert "%%cql df <<" in str(result.error_in_exec)


def test_cql_line_magic(shell: InteractiveShell, settings: Settings) -> None:
    _orders(settings.output_dir)
    result = shell.run_cell("%cql -o n select count(*) as n from orders")
    assert result.success, result.error_in_exec
    assert result.result.df["n"][0] == 3
    assert shell.user_ns["n"]["n"][0] == 3
    assert "line" in shell.magics_manager.magics and "cql" in shell.magics_manager.magics["line"]


def test_cql_binds_notebook_variables_as_parameters(shell: InteractiveShell,
                                                    settings: Settings) -> None:
    """``{name}`` is a bound parameter: a hostile string is compared, never executed."""
    _orders(settings.output_dir)
    shell.user_ns["threshold"] = 100
    result = shell.run_cell("%%cql -o big\nselect id from orders where amount > {threshold} "
                            "order by id\n")
    assert result.success, result.error_in_exec
    assert shell.user_ns["big"]["id"].tolist() == [2, 3]
    shell.user_ns["evil"] = "x' or '1'='1"
    result = shell.run_cell("%cql select count(*) as n from orders where cast(id as text) = {evil}")
    assert result.success, result.error_in_exec
    assert result.result.df["n"][0] == 0
    # Braces in string literals and doubled braces are text, not placeholders.
    result = shell.run_cell("%cql select '{threshold}' as a, '{{x}}' as b")
    assert result.success, result.error_in_exec
    assert result.result.df["a"][0] == "{threshold}"


def test_cql_unknown_variable_is_a_clear_error(shell: InteractiveShell,
                                               settings: Settings) -> None:
    _orders(settings.output_dir)
    result = shell.run_cell("%cql select * from orders where id = {nope}")
    assert not result.success
    assert isinstance(result.error_in_exec, NameError)
    assert "{nope} names no notebook variable" in str(result.error_in_exec)


def test_cql_arrow_result(shell: InteractiveShell, settings: Settings) -> None:
    _orders(settings.output_dir)
    result = shell.run_cell("%cql --arrow -o t select id from orders order by id")
    assert result.success, result.error_in_exec
    assert isinstance(shell.user_ns["t"], pa.Table)
    assert shell.user_ns["t"].column("id").to_pylist() == [1, 2, 3]


def test_bind_variables_leaves_literals_and_comments_alone() -> None:
    from casparian_nb.notebook._sqlparams import bind_variables

    query, params = bind_variables(
        "select {a}, '{a}', \"{a}\" -- {a}\n/* {a} */, {{a}}, {'k': 1}", {"a": 5})
    assert query == "select $a, '{a}', \"{a}\" -- {a}\n/* {a} */, {a}, {'k': 1}"
    assert params == {"a": 5}
