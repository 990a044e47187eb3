"""`model.linear: prefit`: the head's linear part fitted before training, as the suite's floor is.

Issue 12 measured the DCN 0.004–0.008 AUC under a scikit-learn logistic regression on the
same features, and our own trainer fitting that very regression ~0.009 under it: the
step-wise optimizers leave rarely seen ids' weights where the exact L2 optimum does not.
So the regression is fitted here as scikit-learn fits the floor (L-BFGS over the whole
train split in memory, the same objective scaling and stopping rule, `fit_logistic`), its
L2 strength picked by AUC on the valid split (as `benchmarks/generalisation.py` picks the
floor's C; never on the eval split), and the model's `LinearLogit` holds it fixed; the deep
part only adds a residual on top.

The design matrix is the one-hot matrix of the encoded ids: one column per row of each
feature's `LinearLogit` table (multi-valued ids each count 1, padding excluded; a
`normalize` numeric is one real-valued column). Objective, with `lambda` from
`model.linear_l2_grid` (= 1/C of scikit-learn):

    (1/N) [ sum_i log(1 + exp(-s_i (x_i . w + b))) + lambda / 2 * ||w||^2 ]     (s_i = +-1, b not penalised)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from tfvctr import data as data_lib
from tfvctr import layout
from tfvctr.config import Config
from tfvctr.errors import ConfigError, DataError
from tfvctr.io import fs
from tfvctr.metrics import auc

MAX_ITERATIONS = 2000  # L-BFGS iterations per L2 value (scikit-learn's floor: 1000)


def design_matrix(config: Config, data_dir: str, split: str, encoder: Any, layer: Any) -> tuple[Any, np.ndarray]:
    """The one-hot design matrix (scipy CSR, one column per weight of `layer`) and labels of `split`."""
    import scipy.sparse as sp

    specs = {s["name"]: s for s in layer.features}
    offsets, width = {}, 0
    for s in layer.features:
        offsets[s["name"]], width = width, width + layer.rows(s["name"])
    ad_level = {f.name for f in config.dataset.features if f.source == "ad"} | {"category"}
    files = data_lib.list_shards(data_dir, split)
    dataset = data_lib.make_dataset(
        config, data_dir, split, training=False, encoder=encoder, batch_size=256, files=files,
    )
    rows, cols, vals, labels = [], [], [], []
    n = 0
    with data_lib.data_errors(files):
        for inputs, y in dataset:
            ad_index = inputs["ad_index"].numpy()
            count = ad_index.size
            for name, spec in specs.items():
                x = inputs[name].numpy()
                if name in ad_level:
                    x = x[ad_index]
                if spec["kind"] == "numeric" and spec.get("transform") == "normalize":
                    r, c, v = np.arange(count), np.zeros(count, np.int64), x.reshape(-1).astype(np.float64)
                elif spec["kind"] == "multi":
                    r, j = np.nonzero(x)  # padding id 0 is no token
                    c, v = x[r, j].astype(np.int64), np.ones(r.size)
                else:
                    r, c, v = np.arange(count), x.reshape(-1).astype(np.int64), np.ones(count)
                rows.append(r + n)
                cols.append(c + offsets[name])
                vals.append(v)
            labels.append(y.numpy())
            n += count
    if n == 0:
        raise DataError(f"{fs.join(data_dir, split)}: no impressions to fit the linear part on")
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, width), dtype=np.float64
    )  # duplicate (row, column) pairs add up: a token listed twice counts twice, as in the floor
    return matrix, np.concatenate(labels).astype(np.float64)


def fit_logistic(x: Any, y: np.ndarray, l2: float, tolerance: float = 1e-4) -> tuple[np.ndarray, dict]:
    """Minimises the module's objective by L-BFGS from zero; returns `[w..., b]` and {iterations, converged}.

    As scikit-learn's `LogisticRegression(C=1/l2, solver="lbfgs")` does: the objective divided
    by the number of rows, and L-BFGS stopped once no gradient component exceeds `tolerance`
    (scikit-learn's `tol`, 1e-4 by default). That stop is before the exact optimum (on the
    contrast scenario after ~30 iterations instead of ~470): weights of rarely seen ids stay
    nearer zero, which generalised better than the exact optimum (docs/generalisation_experiments.md,
    "Eighth pass"). A tiny tolerance (1e-10) gives the exact optimum.
    """
    from scipy.optimize import minimize

    sign = 2.0 * y - 1.0
    xt = x.T.tocsr()
    n = float(y.size)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        margin = sign * (x @ w + b)
        loss = np.logaddexp(0.0, -margin).sum() + 0.5 * l2 * w @ w
        residual = -sign * np.exp(-np.logaddexp(0.0, margin))  # d loss / d logit = sigmoid(logit) - y
        return float(loss) / n, np.concatenate([xt @ residual + l2 * w, [residual.sum()]]) / n

    result = minimize(objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                      options={"maxiter": MAX_ITERATIONS, "gtol": tolerance, "ftol": 64 * np.finfo(float).eps, "maxls": 50})  # fmt: skip
    return result.x, {"iterations": int(result.nit), "converged": bool(result.success)}


def prefit_linear(
    model: Any, config: Config, data_dir: str, encoder: Any, log: Optional[Callable[[str], None]] = None
) -> dict:
    """Fits `model.linear_part` on DATA/train, its L2 chosen on DATA/valid; returns the record.

    Every L2 value of `model.linear_l2_grid` is fitted (each from zero, to `model.linear_tolerance`);
    the one of the best valid AUC is assigned to the layer. Without a
    valid split a one-value grid is fitted as is; a longer grid is a ConfigError (there is
    nothing to choose on).
    """
    layer = model.linear_part
    if layer is None:
        raise ConfigError("model.linear: prefit: the model has no linear part (architecture dcn or cscnn_dcn only)")
    start = time.time()
    grid = sorted(config.model.linear_l2_grid, reverse=True)
    try:
        has_valid = bool(data_lib.list_shards(data_dir, layout.VALID))
    except DataError:
        has_valid = False
    if not has_valid and len(grid) > 1:
        raise ConfigError(
            f"model.linear_l2_grid: {len(grid)} values but {fs.join(data_dir, layout.VALID)} holds no valid split to "
            f"choose among them; preprocess with dataset.validation.mode, or give one value"
        )
    x, y = design_matrix(config, data_dir, layout.TRAIN, encoder, layer)
    if has_valid:
        x_valid, y_valid = design_matrix(config, data_dir, layout.VALID, encoder, layer)
    trials, best = [], None
    for l2 in grid:
        theta, info = fit_logistic(x, y, l2, config.model.linear_tolerance)
        score = auc(y_valid, x_valid @ theta[:-1] + theta[-1]) if has_valid else float("nan")
        trials.append({"l2": l2, "valid_auc": score, **info})
        if best is None or score > best[0]:
            best = (score, l2, theta.copy())
    score, l2, theta = best
    weights, offset = {}, 0
    for s in layer.features:
        rows = layer.rows(s["name"])
        weights[s["name"]], offset = theta[offset:offset + rows], offset + rows
    layer.set_fitted(weights, float(theta[-1]))
    record = {
        "l2": l2, "valid_auc": None if np.isnan(score) else score, "grid": trials,
        "train_impressions": int(y.size), "valid_impressions": int(y_valid.size) if has_valid else 0,
        "columns": int(x.shape[1]), "seconds": round(time.time() - start, 1),
    }  # fmt: skip
    if log:
        chosen = "" if not has_valid else f", valid AUC {score:.4f}"
        log(f"linear part pre-fitted on {y.size} train impressions: L2 {l2:g} of {len(grid)}{chosen} "
            f"({record['seconds']:.0f} s)")  # fmt: skip
    return record
