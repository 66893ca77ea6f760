"""The demo: a sample ``orders`` plugin and generated sample files.

``casparian demo`` (and ``make demo``) writes the plugin to ``<home>/plugins/orders.py`` and
sample CSV files to ``<home>/demo/data``, then runs them. A few rows in every file are
deliberately bad so the quarantine output has something to show.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["SAMPLE_PLUGIN", "write_sample_data", "write_sample_plugin"]

SAMPLE_PLUGIN = '''\
"""Sample parser: order CSV exports -> an `orders` table (+ quarantine for bad rows)."""
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

name = "orders"
version = "1.0.0"
outputs = {
    "orders": {
        "columns": [
            {"name": "order_id", "type": "int64"},
            {"name": "customer", "type": "string"},
            {"name": "amount", "type": "float64"},
            {"name": "currency", "type": "string"},
            {"name": "ordered_at", "type": "timestamp"},
        ]
    }
}


def parse(path, ctx=None):
    raw = pv.read_csv(path, convert_options=pv.ConvertOptions(
        column_types={c: pa.string() for c in ["order_id", "customer", "amount", "currency", "ordered_at"]}))
    ok_amount = pc.match_substring_regex(raw["amount"], r"^-?[0-9]+(\\.[0-9]+)?$")
    errors = pc.if_else(ok_amount, pa.scalar(None, pa.string()),
                        pc.binary_join_element_wise("bad amount: ", raw["amount"], ""))
    amount = pc.if_else(ok_amount, raw["amount"], pa.scalar(None, pa.string()))
    return pa.table({
        "order_id": pc.cast(raw["order_id"], pa.int64()),
        "customer": raw["customer"],
        "amount": pc.cast(amount, pa.float64()),
        "currency": raw["currency"],
        "ordered_at": pc.strptime(raw["ordered_at"], format="%Y-%m-%dT%H:%M:%S", unit="s"),
        "_cf_row_error": errors,
    })
'''

_CUSTOMERS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell"]
_CURRENCIES = ["EUR", "USD", "GBP"]


def write_sample_plugin(plugins_dir: Path) -> Path:
    plugins_dir.mkdir(parents=True, exist_ok=True)
    path = plugins_dir / "orders.py"
    path.write_text(SAMPLE_PLUGIN, encoding="utf-8")
    return path


def write_sample_data(data_dir: Path, *, files: int = 12, rows: int = 500, seed: int = 7) -> list[Path]:
    """Deterministic sample order exports; every 97th row has a malformed amount."""
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    written = []
    order_id = 1
    for f in range(files):
        path = data_dir / f"orders_{2026}_{f + 1:02d}.csv"
        lines = ["order_id,customer,amount,currency,ordered_at"]
        for _ in range(rows):
            amount = f"{rng.uniform(5, 500):.2f}" if order_id % 97 else "12.50EUR"
            day = 1 + (order_id % 28)
            lines.append(f"{order_id},{rng.choice(_CUSTOMERS)},{amount},{rng.choice(_CURRENCIES)},"
                         f"2026-{(f % 12) + 1:02d}-{day:02d}T{order_id % 24:02d}:00:00")
            order_id += 1
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(path)
    return written
