"""The audit's robustness statistics: the least-squares line and Pearson correlation of
after-attack against before-attack scores across checkpoints (:func:`fit_line`), the table of
every metric x attack x split, the uninformative flag, and the ranking and recommendation."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

from ..formatting import number as fmt

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__tracebackhide__ = True

ALGORITHM = "audit-v1"
SPLITS = ("forget", "retain")
NONE = "none"
RANK_DECIMALS = 3  # mean PCCs equal to this many decimals are a tie, broken by |slope - 1|
TABLE_COLUMNS = ["metric", "attack", "split", "pcc", "slope", "intercept", "n", "before_mean", "after_mean",
                 "original_before", "original_after", "uninformative", "surface", "direction"]


# ---------------------------------------------------------------- the statistics

def fit_line(before: Sequence[float], after: Sequence[float]) -> dict[str, float]:
    """Pearson correlation and least-squares line ``after = slope * before + intercept``.

    Pairs where either value is not finite are left out (``n`` counts the rest).  With
    fewer than 2 pairs everything is NaN; with no spread in ``before`` the slope is NaN;
    with no spread in either the PCC is NaN.
    """
    import numpy as np

    x = np.asarray(before, dtype=np.float64)
    y = np.asarray(after, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(len(x))
    out = {"pcc": math.nan, "slope": math.nan, "intercept": math.nan, "n": n}
    if n < 2:
        return out
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    scale_x = max(1.0, float(np.abs(x).max()))
    scale_y = max(1.0, float(np.abs(y).max()))
    spread_x = sxx > (1e-12 * scale_x) ** 2 * n
    spread_y = syy > (1e-12 * scale_y) ** 2 * n
    if spread_x:
        out["slope"] = sxy / sxx
        out["intercept"] = float(y.mean() - out["slope"] * x.mean())
    if spread_x and spread_y:
        out["pcc"] = float(np.clip(sxy / math.sqrt(sxx * syy), -1.0, 1.0))
    return out


def _summarise(scores, ms, attack_objs, splits):
    """Table, ranking, recommendation and the notes about them, from the per-model scores."""
    import numpy as np

    from ..attacks import attack_is_uninformative

    notes: list[str] = []
    table = _table(scores, ms, attack_objs, splits, attack_is_uninformative)
    ranking = _ranking(table, [m.name for m in ms], notes)
    recommendation = None
    if len(ranking) and np.isfinite(ranking.iloc[0]["mean_pcc"]) and ranking.iloc[0]["rows"] > ranking.iloc[0]["nan_rows"]:
        recommendation = str(ranking.iloc[0]["metric"])
    for r in table[table["pcc"].isna()].itertuples():
        if r.n >= 2:
            after = scores[(scores["role"] == "checkpoint") & (scores["metric"] == r.metric)
                           & (scores["split"] == r.split) & (scores["attack"] == r.attack)]["value"]
            side = "after" if after.nunique() <= 1 else "before"
            notes.append(f"{r.metric} under {r.attack} on {r.split}: PCC undefined, every checkpoint scores the same "
                         f"{side} the attack{f' ({fmt(after.iloc[0])})' if side == 'after' and len(after) else ''}; "
                         "counted as PCC 0 in the ranking")
    for r in table[table["uninformative"]].itertuples():
        notes.append(f"{r.attack} is uninformative for {r.metric} on {r.split}: it also wipes out the original's "
                     f"knowledge ({fmt(r.original_before)} -> {fmt(r.original_after)})")
    return table, ranking, recommendation, notes


def _table(scores, ms, attack_objs, splits, uninformative_fn) -> "pd.DataFrame":
    import numpy as np
    import pandas as pd

    ck = scores[scores["role"] == "checkpoint"]
    ctrl = scores[scores["role"] == "original"]
    rows = []
    for m in ms:
        for label, a in attack_objs:
            for split in splits:
                sel = ck[(ck["metric"] == m.name) & (ck["split"] == split)]
                if sel.empty:
                    continue
                before = sel[sel["attack"] == NONE].set_index("checkpoint")["value"]
                after = sel[sel["attack"] == label].set_index("checkpoint")["value"].reindex(before.index)
                fit = fit_line(before.to_numpy(), after.to_numpy())
                c = ctrl[(ctrl["metric"] == m.name) & (ctrl["split"] == split)]
                ob = c[c["attack"] == NONE]["value"]
                oa = c[c["attack"] == label]["value"]
                ob = float(ob.iloc[0]) if len(ob) else math.nan
                oa = float(oa.iloc[0]) if len(oa) else math.nan
                uninf = bool(np.isfinite(ob) and np.isfinite(oa)) and bool(uninformative_fn(ob, oa, m, attack=a))
                rows.append({"metric": m.name, "attack": label, "split": split, **fit,
                             "before_mean": float(np.nanmean(before)) if np.isfinite(before).any() else math.nan,
                             "after_mean": float(np.nanmean(after)) if np.isfinite(after).any() else math.nan,
                             "original_before": ob, "original_after": oa, "uninformative": uninf,
                             "surface": a.kind == "prompt", "direction": m.direction})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["n"] = table["n"].astype(int)
    return table


def _ranking(table, metric_names: list[str], notes: list[str] | None = None) -> "pd.DataFrame":
    """One row per metric, best first.  Metrics are compared on the same footing: only the
    attack/split rows that every ranked metric has count (``truth_ratio`` without perturbed
    answers on one split would otherwise be ranked on fewer, perhaps easier, rows)."""
    import numpy as np
    import pandas as pd

    present = [n for n in metric_names if (table["metric"] == n).any()]
    pairs = {n: set(zip(table.loc[table["metric"] == n, "attack"], table.loc[table["metric"] == n, "split"]))
             for n in present}
    common = set.intersection(*pairs.values()) if pairs else set()
    if pairs and not common:
        common = set.union(*pairs.values())
        if notes is not None:
            notes.append("the metrics share no attack/split row: each is ranked on its own rows")
    elif notes is not None and any(p != common for p in pairs.values()):
        notes.append(f"metrics are ranked on the {len(common)} attack/split rows they all have "
                     f"({', '.join(f'{a}/{s}' for a, s in sorted(common))}); rows some metrics lack are in the "
                     "table but not in the ranking")
    rows = []
    for name in present:
        t = table[table["metric"] == name]
        t = t[[(a, s) in common for a, s in zip(t["attack"], t["split"])]]
        if t.empty:
            continue
        pcc = t["pcc"].to_numpy(dtype=np.float64)
        surface = t[t["surface"]]
        dev_src = surface if len(surface) else t
        dev = np.abs(dev_src["slope"].to_numpy(dtype=np.float64) - 1.0)
        rows.append({"metric": name,
                     "mean_pcc": float(np.mean(np.nan_to_num(pcc, nan=0.0))),
                     "min_pcc": float(np.nanmin(pcc)) if np.isfinite(pcc).any() else math.nan,
                     "mean_abs_slope_dev": float(np.nanmean(dev)) if np.isfinite(dev).any() else math.nan,
                     "rows": int(len(t)), "nan_rows": int(np.isnan(pcc).sum())})
    ranking = pd.DataFrame(rows, columns=["metric", "mean_pcc", "min_pcc", "mean_abs_slope_dev", "rows", "nan_rows"])
    if len(ranking):
        key_pcc = -ranking["mean_pcc"].round(RANK_DECIMALS).to_numpy()
        key_dev = ranking["mean_abs_slope_dev"].fillna(np.inf).to_numpy()
        order = np.lexsort((-ranking["mean_pcc"].to_numpy(), key_dev, key_pcc))
        ranking = ranking.iloc[order].reset_index(drop=True)
    return ranking
