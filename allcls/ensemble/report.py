"""The comparison of weighting schemes: a table (terminal, CSV, Markdown, HTML), a bar chart of
scores with confidence intervals, and a heat map of the weights each scheme gave each member."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from allcls.ensemble.cross_validation import SchemeResult
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
            # paired with the best-ranked scheme over the same folds (allcls.ensemble.choice)
            "gap_to_best": result.gap if result.rank else None,
            "gap_se": result.gap_se if result.rank else None,
            "tied_with_best": result.tied if result.rank else None,
            "chosen": result.chosen,
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
        "scheme": [("* " if chosen else "  ") + name for name, chosen in zip(table["scheme"], table["chosen"],
                                                                          strict=True)],
        f"cv {metric} [95% CI]": [f"{c:.3f} [{lo:.3f}, {hi:.3f}]" for c, lo, hi in
                                  zip(table[f"cv_{metric}"], table["cv_ci_low"], table["cv_ci_high"], strict=True)],
        "behind best (paired)": [_gap(rank, gap, se, tied) for rank, gap, se, tied in
                                 zip(table["rank"], table["gap_to_best"], table["gap_se"], table["tied_with_best"],
                                     strict=True)],
        f"val {metric}": table[f"val_{metric}"].map("{:.3f}".format),
        f"test {metric}": table.get(f"test_{metric}", pd.Series(np.nan, index=table.index))
        .map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
        "weights": [" ".join(f"{w:.2f}" for w in row)
                    for row in table[[f"weight:{n}" for n in member_names]].to_numpy()],
    })
    legend = ("* chosen; behind best: mean difference to the best-ranked scheme over the same folds ± its standard "
              "error (tied: within one standard error)\nweights, in order: " + ", ".join(member_names))
    return shown.to_string(index=False) + "\n" + legend


def _gap(rank, gap, se, tied) -> str:
    if rank == 1:
        return "best"
    if gap is None or pd.isna(gap):
        return ""  # the best single member: not a scheme
    return f"{gap:.3f} ± {se:.3f}" + (" tied" if tied else "")


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
    """Cross-validated score with its 95% CI per scheme, the schemes tied with the best (one
    standard error, paired) in their own colour and the chosen one starred; in-sample validation
    and test as markers. The axis starts where the scores do, and says so."""
    rows = table.iloc[::-1]
    y = np.arange(len(rows))
    fig, ax = subplots(figsize=(8, 0.35 * len(rows) + 2.2))
    cv = rows[f"cv_{metric}"].to_numpy()
    errors = np.vstack([cv - rows["cv_ci_low"].to_numpy(), rows["cv_ci_high"].to_numpy() - cv])
    tied = rows["tied_with_best"].to_numpy()
    colours = ["#bbbbbb" if pd.isna(t) else "#4c72b0" if t else "#a9b8d4" for t in tied]  # grey: the best member
    ax.barh(y, cv, xerr=np.nan_to_num(errors), color=colours, capsize=3)
    ax.scatter(rows[f"val_{metric}"], y, marker="|", s=200, color="black", label="validation, in-sample", zorder=3)
    if f"test_{metric}" in rows:
        ax.scatter(rows[f"test_{metric}"], y, marker="D", color="#dd8452", label="test", zorder=3)
    ax.set_yticks(y, [("★ " if chosen else "") + name for name, chosen in zip(rows["scheme"], rows["chosen"],
                                                                               strict=True)])
    low = max(0.0, float(np.nanmin(np.concatenate([rows["cv_ci_low"].to_numpy(), cv]))) - 0.05)
    ax.set_xlim(low, 1.0)
    ax.set_xlabel(metric + (f" (the axis starts at {low:.2f}, not 0)" if low > 0 else ""))
    handles = [Patch(color="#4c72b0", label="cross-validated (95% CI), tied with the best"),
               Patch(color="#a9b8d4", label="cross-validated, behind the best"),
               Patch(color="#bbbbbb", label="the best single member, for comparison"),
               *ax.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Ensemble weighting schemes (★ chosen: the simplest of those tied with the best)", fontsize=11)
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
