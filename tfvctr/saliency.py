"""What a trained model looks at: pixel saliency (DeepCTR §6.3) and CSCNN's spatial attention.

**Saliency** (Chen et al. 2016, §6.3). Around an image U0 the model is approximately
linear in the pixels, z(U) ≈ wᵀU + b (Eq. 9), with w = ∂z/∂U at U0 (Eq. 10); the map is
M_ij = max_c |w_ij(c)| over the RGB channels c (Eq. 11). z is the logit. An ad is shown
to several impressions (users, hours, positions), each with its own logit, so an ad's z
is the mean logit of its impressions in the chunk it is read from: its saliency is what
the image does to the CTR in the contexts the ad was actually shown in.

**Spatial attention** (Liu et al. 2020, Eq. 11). A CSCNN (or CBAM) tower also says where it
looks: M_s of the first attended conv layer (the largest map), for the same ads. The
learned category spatial priors A′s (one H′×W′ map per category and attended layer) are
drawn apart, one row per category.

`tfvctr saliency --model-dir M --data D --out DIR` writes, for every category, the
`--ads N` highest and N lowest predicted-CTR ads of `D/eval` as a PNG grid (image |
saliency | overlay | M_s), the priors, and `saliency.json` (which ads, their CTRs, and where
the saliency mass lies); docs/design.md places the stage.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, Iterable, Optional

import keras
import numpy as np
import tensorflow as tf

import tfvctr.models  # noqa: F401 - registers the model classes for load_model
from tfvctr import data as data_lib
from tfvctr import layout
from tfvctr.config import Config, load_config
from tfvctr.errors import DataError, TfvctrError
from tfvctr.features import CATEGORY, FeatureEncoder
from tfvctr.fingerprint import check_model_data, trained_data_dir
from tfvctr.io import fs
from tfvctr.layers.attention import spatial_module

# ----------------------------------------------------------------------------- the maps


def pixel_saliency(model: Any, inputs: dict) -> np.ndarray:
    """DeepCTR Eqs. 9–11 for every ad of a batch: max over RGB of |∂z/∂pixel|.

    Args:
        model: a `CTRModel` (or any callable `model(inputs, training=False)` → logits [N]).
        inputs: one batch of `tfvctr.data.make_dataset` (`image` [n,H,W,3], `ad_index` [N], ...).

    Returns:
        float32 [n, H, W]: the saliency map M of each ad, z being its mean logit over its
        impressions in the batch.
    """
    image = tf.convert_to_tensor(inputs["image"], tf.float32)
    ad_index = tf.convert_to_tensor(inputs["ad_index"], tf.int32)
    with tf.GradientTape() as tape:
        tape.watch(image)
        logits = tf.cast(model({**inputs, "image": image}, training=False), tf.float32)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(logits), ad_index, tf.shape(image)[0])
        # In inference mode the ads of a batch do not interact (batch norm uses its moving
        # statistics), so one gradient of the sum of every ad's mean logit gives each image
        # the gradient of its own z.
        z = tf.reduce_sum(logits / tf.gather(counts, ad_index))
    w = tape.gradient(z, image)  # Eq. 10
    return tf.reduce_max(tf.abs(w), axis=-1).numpy()  # Eq. 11


def attention_sites(model: Any) -> list[keras.layers.Layer]:
    """The attention layers with a spatial map in the model's visual tower, in depth order."""
    tower = getattr(model, "visual_tower", None)
    if tower is None:
        return []
    sites = []
    for layer in tower.layers:
        for inner in getattr(layer, "layers", [layer]):  # the backbone is a sub-model of the tower
            if spatial_module(inner) is not None:
                sites.append(inner)
    return sites


def spatial_attention(model: Any, images: np.ndarray, category_ids: np.ndarray, site: int = 0) -> Optional[np.ndarray]:
    """M_s [n, h, w] of attention site `site` (0: the first attended layer) for these ads, or None.

    The feature map that enters the site is computed by a sub-model of the backbone; the
    site's layer is then called on it with `return_attention=True` (CSCNN Eq. 11).
    """
    sites = attention_sites(model)
    if not sites:
        return None
    layer = sites[site]
    backbone = next(b for b in model.visual_tower.layers if layer in getattr(b, "layers", []))
    to_site = keras.Model(backbone.input, layer.input[0])
    ids = np.asarray(category_ids, "int32")
    feature_map = to_site({"image": np.asarray(images, "float32"), "category": ids}, training=False)
    _, maps = layer(feature_map, ids, return_attention=True)
    return np.asarray(maps["spatial"], "float32")


def spatial_priors(model: Any) -> list[tuple[str, np.ndarray]]:
    """`(site name, A′s [num_categories, H′, W′])` of every category-specific spatial attention layer."""
    out = []
    for layer in attention_sites(model):
        module = spatial_module(layer)
        if module.uses_prior:
            out.append((layer.name, np.asarray(module.spatial_prior, "float32")))
    return out


def mass_share(saliency: np.ndarray, mask: np.ndarray) -> float:
    """The share of the saliency mass that lies on `mask` (a boolean [H, W])."""
    total = float(saliency.sum())
    return float(saliency[mask].sum()) / total if total > 0 else float("nan")


# ----------------------------------------------------------------------------- choosing the ads


@dataclasses.dataclass
class AdExplanation:
    """One ad's picture: the image, its saliency map and (CSCNN/CBAM) spatial attention."""

    ad_id: str
    category: str
    rank: str  # "highest" or "lowest" predicted CTR of its category
    predicted_ctr: float  # mean over the ad's impressions in the split
    observed_ctr: float
    impressions: int
    image: np.ndarray  # [H, W, 3] in [0, 1]
    saliency: np.ndarray  # [H, W]
    attention: Optional[np.ndarray] = None  # [h, w] M_s of the first attended layer

    def summary(self) -> dict[str, Any]:
        return {
            "ad_id": self.ad_id,
            "rank": self.rank,
            "predicted_ctr": round(self.predicted_ctr, 6),
            "observed_ctr": round(self.observed_ctr, 6),
            "impressions": self.impressions,
        }


def _decode(values: Iterable[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def score_ads(model: Any, dataset: Any, category_names: list[str]) -> dict[str, dict[str, Any]]:
    """`{ad_id: {"category", "category_id", "predicted", "observed", "impressions"}}` over a split."""
    predict = tf.function(
        lambda inputs: tf.sigmoid(tf.cast(model(inputs, training=False), tf.float32)), reduce_retracing=True
    )
    ads: dict[str, dict[str, Any]] = {}
    for inputs, labels, meta in dataset:
        probs, labels = predict(inputs).numpy(), labels.numpy()
        ad_index = inputs["ad_index"].numpy()
        for row, (ad_id, category_id) in enumerate(zip(_decode(meta["ad_id"].numpy()), inputs[CATEGORY].numpy(), strict=True)):
            mine = ad_index == row
            a = ads.setdefault(ad_id, {"category_id": int(category_id), "sum_p": 0.0, "sum_y": 0.0, "impressions": 0})
            a["sum_p"] += float(probs[mine].sum())
            a["sum_y"] += float(labels[mine].sum())
            a["impressions"] += int(mine.sum())
    for a in ads.values():
        n = max(a["impressions"], 1)
        a["predicted"], a["observed"] = a.pop("sum_p") / n, a.pop("sum_y") / n
        k = a["category_id"]
        a["category"] = category_names[k - 1] if 1 <= k <= len(category_names) else "(unknown)"
    return ads


def choose_ads(ads: dict[str, dict[str, Any]], per_category: int) -> dict[str, str]:
    """`{ad_id: "highest" | "lowest"}`: the `per_category` highest and lowest predicted-CTR ads
    of each category (ties by ad_id). A category with fewer than 2N ads shows each ad once,
    its upper half as the highest."""
    by_category: dict[str, list[str]] = {}
    for ad_id, a in ads.items():
        if a["impressions"]:
            by_category.setdefault(a["category"], []).append(ad_id)
    chosen: dict[str, str] = {}
    for ids in by_category.values():
        ranked = sorted(ids, key=lambda i: (-ads[i]["predicted"], i))
        top = ranked[: min(per_category, (len(ranked) + 1) // 2)]
        bottom = ranked[::-1][: min(per_category, len(ranked) - len(top))]
        chosen.update({i: "highest" for i in top})
        chosen.update({i: "lowest" for i in bottom})
    return chosen


def explain(
    model: Any, config: Config, encoder: FeatureEncoder, data_dir: str, *, split: str = "eval", ads_per_category: int = 2
) -> list[AdExplanation]:
    """Saliency (and spatial attention) of the highest- and lowest-CTR ads of every category.

    Two passes over `data_dir/split`: the first scores every impression and picks the ads,
    the second takes the gradient of the batches that hold them (each ad from its first
    chunk), and stops once every chosen ad is done.
    """
    if ads_per_category < 1:
        raise TfvctrError(f"--ads: expected a positive number of ads per category, received {ads_per_category}")
    if getattr(model, "visual_tower", None) is None:
        raise TfvctrError(f"model {config.name!r} ({config.model.architecture}) reads no image: there is no saliency to show")
    files = data_lib.list_shards(data_dir, split)

    def dataset():
        return data_lib.make_dataset(config, data_dir, split, training=False, encoder=encoder, with_meta=True, files=files)

    names = list(encoder.vocabularies[CATEGORY])
    with data_lib.data_errors(files):
        ads = score_ads(model, dataset(), names)
        if not ads:
            raise DataError(f"{fs.join(data_dir, split)}: no impressions")
        chosen = choose_ads(ads, ads_per_category)
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for inputs, _, meta in dataset():
            batch_ids = _decode(meta["ad_id"].numpy())
            rows = [r for r, ad_id in enumerate(batch_ids) if ad_id in chosen and ad_id not in found]
            if not rows:
                continue
            saliency = pixel_saliency(model, inputs)
            images = inputs["image"].numpy()
            for r in rows:
                found[batch_ids[r]] = (images[r], saliency[r])
            if len(found) == len(chosen):
                break
    order = sorted(chosen, key=lambda i: (ads[i]["category"], chosen[i] != "highest", -ads[i]["predicted"], i))
    images = np.stack([found[i][0] for i in order])
    attention = spatial_attention(model, images, np.array([ads[i]["category_id"] for i in order]))
    return [
        AdExplanation(
            ad_id=i, category=ads[i]["category"], rank=chosen[i], predicted_ctr=ads[i]["predicted"],
            observed_ctr=ads[i]["observed"], impressions=ads[i]["impressions"], image=found[i][0], saliency=found[i][1],
            attention=None if attention is None else attention[j],
        )
        for j, i in enumerate(order)
    ]


# ----------------------------------------------------------------------------- pictures


def _pyplot() -> Any:
    # Lazy: pyplot must load after the file-only Agg backend is chosen (no display on servers).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    _pyplot().close(fig)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def plot_category(explanations: list[AdExplanation], path: str) -> None:
    """One category's grid: a row per ad, columns image | saliency | overlay (| M_s)."""
    plt = _pyplot()
    with_attention = explanations[0].attention is not None
    columns = ["image", "saliency |dz/dU|", "overlay"] + (["spatial attention Ms"] if with_attention else [])
    fig, axes = plt.subplots(len(explanations), len(columns), figsize=(2.1 * len(columns), 2.2 * len(explanations)),
                             dpi=80, squeeze=False)
    for row, e in enumerate(explanations):
        heat = e.saliency / max(float(e.saliency.max()), 1e-12)
        axes[row, 0].imshow(e.image)
        axes[row, 0].set_ylabel(f"{e.rank}\n{e.ad_id}\npCTR {e.predicted_ctr:.3f}", fontsize=8)
        axes[row, 1].imshow(heat, cmap="inferno", vmin=0, vmax=1)
        axes[row, 2].imshow(e.image)
        axes[row, 2].imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        if with_attention:
            size = e.image.shape[0]
            axes[row, 3].imshow(e.attention, cmap="viridis", vmin=0, vmax=1, extent=(0, size, size, 0),
                                interpolation="bilinear")
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
    fig.suptitle(f"{explanations[0].category}: highest and lowest predicted CTR", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_priors(priors: list[tuple[str, np.ndarray]], category_names: list[str], path: str) -> None:
    """A′s per category (rows; row 0 the unknown category) and attended layer (columns)."""
    plt = _pyplot()
    rows = ["(unknown)"] + list(category_names)
    fig, axes = plt.subplots(len(rows), len(priors), figsize=(1.2 * len(priors) + 1, 1.1 * len(rows)), dpi=80,
                             squeeze=False)
    for col, (name, table) in enumerate(priors):
        bound = float(np.abs(table).max()) or 1.0
        for row, label in enumerate(rows[: table.shape[0]]):
            ax = axes[row, col]
            ax.imshow(table[row], cmap="RdBu_r", vmin=-bound, vmax=bound)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(name.removesuffix("_attention"), fontsize=7)
    fig.suptitle("learned category spatial priors A's (CSCNN Eq. 11)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------- the command


def object_mask(image: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Pixels that differ from the background colour (the median of the image border) by more
    than `threshold` (max over RGB): the object of a demo image, which sits on a plain background."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = np.median(border, axis=0)
    return np.abs(image - background).max(axis=-1) > threshold


def load_trained(model_dir: str, data_dir: str) -> tuple[Config, FeatureEncoder, Any]:
    """The config, feature encoder (the training data's vocabularies) and model of a model dir."""
    check_model_data(model_dir, data_dir, "saliency")  # unfinished training, a data dir that does not fit
    config = load_config(fs.join(model_dir, layout.CONFIG))
    model = keras.saving.load_model(fs.join(model_dir, layout.MODEL), compile=False)
    return config, FeatureEncoder.from_data_dir(config.dataset, trained_data_dir(model_dir, data_dir)), model


def saliency_report(
    model_dir: str, data_dir: str, out_dir: str, *, ads_per_category: int = 2, split: str = "eval"
) -> dict[str, Any]:
    """Writes the pictures of `explain` and `saliency.json` to `out_dir`; returns that summary."""
    config, encoder, model = load_trained(model_dir, data_dir)
    explanations = explain(model, config, encoder, data_dir, split=split, ads_per_category=ads_per_category)
    fs.makedirs(out_dir)
    summary: dict[str, Any] = {
        "model_dir": model_dir, "data_dir": data_dir, "split": split, "ads_per_category": ads_per_category,
        "attention_site": None, "categories": {},
    }
    sites = attention_sites(model)
    if sites:
        summary["attention_site"] = sites[0].name
    by_category: dict[str, list[AdExplanation]] = {}
    for e in explanations:
        by_category.setdefault(e.category, []).append(e)
    for category, group in by_category.items():
        plot = layout.saliency_plot(category)
        plot_category(group, fs.join(out_dir, plot))
        ads = []
        for e in group:
            mask = object_mask(e.image)
            ads.append({**e.summary(), "object_share": round(float(mask.mean()), 4),
                        "saliency_on_object": round(mass_share(e.saliency, mask), 4)})
        summary["categories"][category] = {"plot": plot, "ads": ads}
    priors = spatial_priors(model)
    summary["priors_plot"] = None
    if priors:
        plot_priors(priors, list(encoder.vocabularies[CATEGORY]), fs.join(out_dir, layout.SPATIAL_PRIORS_PLOT))
        summary["priors_plot"] = layout.SPATIAL_PRIORS_PLOT
    with fs.open(fs.join(out_dir, layout.SALIENCY_INDEX), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
