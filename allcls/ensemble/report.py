"""The comparison of weighting schemes: a table (terminal, CSV, Markdown, HTML), a bar chart of
scores with confidence intervals, and a heat map of the weights each scheme gave each member."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from allcls.ensemble.selection import SchemeResult
from allcls.figures import save_figure, subplots


def comparison_table(results: list[SchemeResult], single: SchemeResult, member_names: list[str], metric: str
                     ) -> pd.DataFrame:
    """One row per scheme, ranked, then the best single member: scores and weights."""
    rows = []
    for result in [*results, single]:
        row = {
            "rank": result.rank or None,
            "scheme": result.name,
            "combine": result.rule,
            f"cv_{metric}": result.cv,
            "cv_ci_low": result.cv_interval[0],
            "cv_ci_high": result.cv_interval[1],
            **{f"val_{name}": value for name, value in result.val.items()},
            **{f"test_{name}": value for name, value in result.test.items()},
        }
        if result.test_interval:
            row["test_ci_low"], row["test_ci_high"] = result.test_interval
        row.update({f"weight:{name}": float(w) for name, w in zip(member_names, result.weights, strict=True)})
        rows.append(row)
    return pd.DataFrame(rows)


def terminal_text(table: pd.DataFrame, metric: str, member_names: list[str]) -> str:
    shown = pd.DataFrame({
        "rank": table["rank"].map(lambda r: "" if pd.isna(r) else int(r)),
        "scheme": table["scheme"],
        f"cv {metric} [95% CI]": [f"{c:.3f} [{lo:.3f}, {hi:.3f}]" for c, lo, hi in
                                  zip(table[f"cv_{metric}"], table["cv_ci_low"], table["cv_ci_high"], strict=True)],
        f"val {metric}": table[f"val_{metric}"].map("{:.3f}".format),
        f"test {metric}": table.get(f"test_{metric}", pd.Series(np.nan, index=table.index))
        .map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
        "weights": [" ".join(f"{w:.2f}" for w in row)
                    for row in table[[f"weight:{n}" for n in member_names]].to_numpy()],
    })
    legend = "weights, in order: " + ", ".join(member_names)
    return shown.to_string(index=False) + "\n" + legend


def markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in table.itertuples(index=False))
    return header + body


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def html(table: pd.DataFrame, title: str) -> str:
    body = table.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="", border=0)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}th{background:#f4f4f4}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>" \
           f"<body><h2>{title}</h2>{body}</body></html>"


def score_chart(table: pd.DataFrame, metric: str, path: Path) -> Path:
    """Cross-validated score with its 95% CI per scheme; in-sample validation and test as markers."""
    rows = table.iloc[::-1]
    y = np.arange(len(rows))
    fig, ax = subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    cv = rows[f"cv_{metric}"].to_numpy()
    errors = np.vstack([cv - rows["cv_ci_low"].to_numpy(), rows["cv_ci_high"].to_numpy() - cv])
    ax.barh(y, cv, xerr=np.nan_to_num(errors), color="#4c72b0", alpha=0.8, capsize=3, label="cross-validated (95% CI)")
    ax.scatter(rows[f"val_{metric}"], y, marker="|", s=200, color="black", label="validation, in-sample", zorder=3)
    if f"test_{metric}" in rows:
        ax.scatter(rows[f"test_{metric}"], y, marker="D", color="#dd8452", label="test", zorder=3)
    ax.set_yticks(y, rows["scheme"])
    low = np.nanmin(np.concatenate([rows["cv_ci_low"].to_numpy(), cv]))
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.set_xlabel(metric)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8, frameon=False)
    ax.set_title("Ensemble weighting schemes")
    return save_figure(fig, path)


def weight_heatmap(table: pd.DataFrame, member_names: list[str], path: Path) -> Path:
    weights = table[[f"weight:{n}" for n in member_names]].to_numpy()
    fig, ax = subplots(figsize=(1.2 * len(member_names) + 3, 0.35 * len(table) + 1.5))
    image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(member_names)), member_names, rotation=30, ha="right")
    ax.set_yticks(range(len(table)), table["scheme"])
    for (row, column), value in np.ndenumerate(weights):
        ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="weight")
    ax.set_title("Weight of each member per scheme")
    return save_figure(fig, path)
