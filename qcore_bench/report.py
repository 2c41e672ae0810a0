"""Tables from the store: one per (dataset, model, bits, noise), methods x kept fraction.

Each entry is the mean +- std over seeds of the final-epoch test accuracy (the
headline; best-over-epochs is never shown unlabelled). The full-data row has one
value, shown in every fraction column as the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .store import atomic_write

GROUP = ["dataset", "model", "bits", "noise"]


def frame(records: Iterable[dict[str, Any]], suite: str | None = None) -> pd.DataFrame:
    """One row per finished cell with the columns the tables group by."""
    rows = []
    for r in records:
        c, res = r["config"], r["result"]
        if suite and c["suite"] != suite:
            continue
        noise = "clean" if c["noise"]["kind"] == "none" else f"{c['noise']['kind']}-{c['noise']['rate']:g}"
        rows.append({"id": r["id"], "suite": c["suite"], "dataset": c["dataset"]["name"], "model": c["model"],
                     "bits": f"{c['w_bits']}/{c['a_bits']}", "noise": noise, "method": c["method"]["name"],
                     "fraction": c["fraction"], "seed": c["seed"], "full": c["method"]["selector"] == "full",
                     "final_acc": res["final_acc"]})
    return pd.DataFrame(rows)


def _fmt(values: pd.Series, expected: int) -> str:
    mean, n = values.mean(), len(values)
    text = f"{mean:.2f} ± {values.std(ddof=1):.2f}" if n > 1 else f"{mean:.2f}"
    return text + (f" (n={n})" if n < expected else "")


def group_table(df: pd.DataFrame) -> pd.DataFrame:
    """Methods (full first, in suite order otherwise) x fractions for one group."""
    fractions = sorted(df.loc[~df.full, "fraction"].unique()) or [1.0]
    expected = df["seed"].nunique()
    rest = list(dict.fromkeys(df.loc[~df.full, "method"]))
    methods = list(dict.fromkeys([*df.loc[df.full, "method"], *(m for m in rest if m == "random"), *rest]))
    table = pd.DataFrame(index=methods, columns=[f"{f:.0%}" for f in fractions], dtype=object)
    for method, rows in df.groupby("method", sort=False):
        if rows["full"].iloc[0]:
            table.loc[method, :] = _fmt(rows["final_acc"], expected)
            continue
        for f, cell in rows.groupby("fraction"):
            table.loc[method, f"{f:.0%}"] = _fmt(cell["final_acc"], expected)
    table.index.name = "method"
    return table.fillna("–")


def _md(table: pd.DataFrame) -> str:
    header = [table.index.name or "", *map(str, table.columns)]
    rows = [[str(i), *map(str, r)] for i, r in zip(table.index, table.to_numpy())]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(df: pd.DataFrame) -> str:
    """All groups as Markdown sections."""
    if df.empty:
        return "No finished runs.\n"
    out = ["Final-epoch test top-1 (%), mean ± std over seeds; (n=k) marks missing seeds; "
           "`full` trains on all data and is repeated in every column.\n"]
    for key, g in df.groupby(GROUP, sort=False):
        title = ", ".join(f"{k} {v}" for k, v in zip(GROUP, key))
        out.append(f"### {title}\n\n{_md(group_table(g))}\n")
    return "\n".join(out)


def write_tables(df: pd.DataFrame, out: Path) -> Path:
    path = out / "tables.md"
    text = markdown(df)
    atomic_write(path, lambda f: f.write(text))
    return path
