"""The pair-wise (BPR) objective of the VBPR family (CSCNN Appendix A, Eq. 14) in the
training loop: in-batch same-user pairs, the loss over the global pair count, zero-pair
steps, and the model's regularization losses in both modes."""

import collections
import itertools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import recordio_fixtures as rf
from tfvctr import data
from tfvctr.config import config_from_dict
from tfvctr.errors import TfvctrError
from tfvctr.features import FeatureEncoder
from tfvctr.models import build_model
from tfvctr.training import Trainer, train
from tfvctr.training.loop import PAIR_USER_KEY, bpr_objective, model_inputs, with_pair_users


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("grouped"))
    rf.write_dataset(root, num_ads=16, num_shards=2)
    return root


def _config(variant="bpr_mf", loss="pairwise", l2=0.0, negatives="in_batch", **training):
    d = rf.tiny_config_dict(**{"augment": {"random_crop": False, "flip": False}, **training})
    # The ad's identity as the item of Eq. 12 (without it the category stands in).
    d["dataset"]["features"].append({"name": "ad_id", "source": "ad", "kind": "categorical", "hash_buckets": 32})
    vbpr = {"variant": variant, "factors": 3, "visual_factors": 3, "loss": loss, "l2": l2, "negatives": negatives}
    d["model"].update(architecture="vbpr", vbpr=vbpr)
    return config_from_dict(d)


def _numpy_bpr(logits, labels, users):
    """Sum of -ln σ(y_ui − y_uj) over (clicked a, non-clicked b) of one user, and the pair count."""
    total, count = 0.0, 0
    for a in range(len(labels)):
        for b in range(len(labels)):
            if labels[a] == 1 and labels[b] == 0 and users[a] == users[b]:
                total += float(np.log1p(np.exp(-(float(logits[a]) - float(logits[b])))))
                count += 1
    return total, count


def _fresh_model(config, enc, inputs):
    model = build_model(config, enc.num_categories, enc.vocab_sizes, seed=config.training.seed)
    model(model_inputs(inputs))
    return model


def test_step_loss_is_numpy_bpr_over_the_global_pair_count(data_dir, tmp_path):
    config = _config("dvbpr", steps=1)
    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    keras.utils.set_random_seed(config.training.seed)  # as the trainer does: shuffles combine it with their op seeds
    inputs, labels, meta = next(iter(data.make_dataset(config, data_dir, encoder=enc, with_meta=True)))
    model = _fresh_model(config, enc, inputs)
    logits = model(inputs, training=True).numpy()
    total, count = _numpy_bpr(logits, labels.numpy(), meta["user_id"].numpy())
    assert count > 0

    loss_sum, pairs, extras = bpr_objective(model, {**inputs, PAIR_USER_KEY: meta["user_id"]}, labels)
    assert float(pairs) == count and float(loss_sum) == pytest.approx(total, rel=1e-5)
    # The train AUC still comes from every impression, not from the pairs.
    assert float(tf.reduce_sum(extras["positives"] + extras["negatives"])) == labels.shape[0]

    lines = []
    result = train(config, data_dir, str(tmp_path), encoder=enc, log=lines.append)
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["loss_name"] == "bpr_loss" and "  bpr_loss " in lines[-1]
    assert result["impressions"] == labels.shape[0] and "auc" in result


def test_a_few_pairwise_steps_reduce_the_bpr_loss_on_the_training_data(data_dir, tmp_path):
    config = _config("bpr_mf", steps=12, log_every=12, checkpoint_every=12, learning_rate=0.05)
    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    # Every training impression in one batch, in file order.
    everything = data.make_dataset(config, data_dir, training=False, encoder=enc, batch_size=64, with_meta=True)
    inputs, labels, meta = next(iter(everything))

    def bpr(model):
        total, count = _numpy_bpr(model(inputs, training=False).numpy(), labels.numpy(), meta["user_id"].numpy())
        assert count > 0
        return total / count

    before = bpr(_fresh_model(config, enc, inputs))
    assert before == pytest.approx(np.log(2.0), abs=0.01)  # near-zero init: σ(0) for every pair
    after = bpr(train(config, data_dir, str(tmp_path), encoder=enc, log=None)["model"])
    assert after < 0.8 * before


def test_a_step_without_pairs_has_zero_loss_and_zero_gradient_even_with_l2(data_dir):
    config = _config("bpr_mf", l2=0.5)
    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    dataset = with_pair_users(data.make_dataset(config, data_dir, encoder=enc, with_meta=True))
    inputs, labels = next(iter(dataset))
    no_clicks = tf.data.Dataset.from_tensors((inputs, tf.zeros_like(labels))).repeat()
    model = _fresh_model(config, enc, inputs)
    cnn_optimizer, optimizer = keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1)
    cnn_optimizer.build(model.visual_variables)
    optimizer.build(model.non_visual_variables)
    trainer = Trainer(tf.distribute.get_strategy(), model, cnn_optimizer, optimizer, bpr_objective, no_clicks.element_spec)
    before = [v.numpy() for v in model.trainable_variables]
    figures = trainer.train(iter(no_clicks), 2, first_step=1)
    assert figures["loss"] == 0.0 and figures["loss_name"] == "bpr_loss"
    for a, b in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("loss", ["pointwise", "pairwise"])
def test_the_model_l2_is_added_to_the_objective(data_dir, tmp_path, loss):
    # One SGD step (momentum starts at zero) from the same weights and batch, with and without
    # l2: the updates differ by -lr · ∂(l2 · Σw²)/∂w = -lr · 2 · l2 · w0 on each table.
    lr, l2 = 0.1, 0.5
    plain = _config("bpr_mf", loss=loss, steps=1, optimizer="sgd", learning_rate=lr)
    penalised = _config("bpr_mf", loss=loss, l2=l2, steps=1, optimizer="sgd", learning_rate=lr)
    enc = FeatureEncoder.from_data_dir(plain.dataset, data_dir)
    inputs, _ = next(iter(data.make_dataset(plain, data_dir, encoder=enc)))
    w0 = _fresh_model(plain, enc, inputs).head
    a = train(plain, data_dir, str(tmp_path / "plain"), encoder=enc, log=None)["model"].head
    b = train(penalised, data_dir, str(tmp_path / "l2"), encoder=enc, log=None)["model"].head
    for name in ("gamma_u", "gamma_i"):
        initial = getattr(w0, name).numpy()
        assert np.abs(initial).max() > 0
        diff = getattr(b, name).numpy() - getattr(a, name).numpy()
        np.testing.assert_allclose(diff, -lr * 2 * l2 * initial, rtol=1e-3, atol=1e-8)


def test_a_pointwise_loss_fn_with_the_pairwise_objective_is_refused(data_dir, tmp_path):
    from tfvctr.models import pointwise_loss

    with pytest.raises(TfvctrError, match=r"^train: loss_fn is a point-wise loss; model.vbpr.loss: pairwise trains the BPR objective$"):
        train(_config(), data_dir, str(tmp_path), loss_fn=pointwise_loss, log=None)


@pytest.mark.slow
def test_two_local_replicas_apply_the_l2_once_and_carry_the_pair_users(data_dir, tmp_path):
    # Pair-wise under a MirroredStrategy of 2 CPU replicas (the raw user-id strings travel to
    # both), one SGD step with and without l2: the penalty must count once in the summed
    # replica gradients, so the updates differ by -lr · 2 · l2 · w0, not twice that.
    from tests.training import test_distributed as dist

    lr, l2 = 0.1, 0.5
    configs = {name: _config("bpr_mf", l2=v, steps=1, ads_per_batch=4, checkpoint_every=1, optimizer="sgd", learning_rate=lr)
               for name, v in (("plain", 0.0), ("l2", l2))}
    runs = {}
    for name, config in configs.items():
        spec, out = dist._spec(tmp_path, name, data_dir, tmp_path / name, config.to_dict(), 1, local_cpus=2)
        runs[name] = (dist._start(spec), out)
    results = {}
    for name, (proc, out) in runs.items():
        log = dist._finish(proc)
        assert "bpr_loss" in log
        results[name] = json.loads(out.read_text())
        assert results[name]["batches_consumed"] == 2 and np.isfinite(results[name]["losses"]).all()
    enc = FeatureEncoder.from_data_dir(configs["plain"].dataset, data_dir)
    inputs, _ = next(iter(data.make_dataset(configs["plain"], data_dir, encoder=enc)))
    initial = _fresh_model(configs["plain"], enc, inputs).get_weights()
    assert max(np.abs(w).max() for w in initial) > 0
    for w0, a, b in zip(initial, results["plain"]["weights"], results["l2"]["weights"], strict=True):
        diff = np.asarray(b) - np.asarray(a)
        np.testing.assert_allclose(diff, -lr * 2 * l2 * w0.astype(np.float64).ravel(), rtol=1e-3, atol=1e-8)


# ------------------------------------------------------------ sampled negatives (the papers' protocol)


def test_sampled_negatives_are_ads_the_user_did_not_click():
    from tfvctr.models.losses import sampled_negative_pairs

    labels = tf.constant([1, 0, 1, 1, 0, 1], tf.float32)
    users = tf.constant(["a", "a", "a", "b", "b", "c"])
    ad_index = tf.constant([0, 1, 2, 0, 3, 0])
    seen = collections.defaultdict(set)
    for shift in range(30):  # other batch contents, other draws
        perm = tf.constant(np.roll(np.arange(4), shift % 4), tf.int32)
        pos, neg = sampled_negative_pairs(labels, users, tf.gather(perm, ad_index), 4)
        pos, neg = pos.numpy(), neg.numpy()
        clicked = {u: {int(perm[a]) for a, y, uu in zip(ad_index.numpy(), labels.numpy(), users.numpy(), strict=True) if y and uu.decode() == u}
                   for u in "abc"}
        assert sorted(pos.tolist()) == [0, 2, 3, 5]  # one pair per click
        for p, j in zip(pos, neg, strict=True):
            user = users.numpy()[p].decode()
            assert j not in clicked[user]  # never an ad the user clicked (a clicked ads 0 and 2)
            seen[user].add(int(j))
    assert len(seen["c"]) == 3  # c clicked one ad: the three others are all drawn over the batches
    # A user who clicked every ad of the batch gets no pair.
    pos, neg = sampled_negative_pairs(tf.constant([1.0, 1.0]), tf.constant(["a", "a"]), tf.constant([0, 1]), 2)
    assert pos.shape == (0,) and neg.shape == (0,)


def test_sampled_objective_scores_the_negative_ad_for_the_clicking_user(data_dir):
    config = _config("bpr_mf", negatives="sampled")
    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    inputs, labels, meta = next(iter(data.make_dataset(config, data_dir, encoder=enc, with_meta=True)))
    model = _fresh_model(config, enc, inputs)
    head = model.head
    for name in ("beta_i", "gamma_u", "gamma_i"):  # non-trivial scores
        w = getattr(head, name)
        w.assign(tf.random.stateless_normal(w.shape, (1, len(name))))
    from tfvctr.models.losses import sampled_negative_pairs

    pos, neg = sampled_negative_pairs(labels, meta["user_id"], inputs["ad_index"], inputs["image"].shape[0])
    assert pos.shape[0] == int(tf.reduce_sum(labels)) > 0
    # NumPy: y_uj = α + β_u + β_j + γ_u·γ_j with u the positive impression's user, j the negative ad.
    u = inputs["user_id"].numpy()
    ad_item = inputs["ad_id"].numpy()
    item = ad_item[inputs["ad_index"].numpy()]
    def y(user, it):
        return (head.alpha.numpy() + head.beta_u.numpy()[user] + head.beta_i.numpy()[it]
                + head.gamma_u.numpy()[user] @ head.gamma_i.numpy()[it])
    pos_np, neg_np = pos.numpy(), neg.numpy()
    expected = sum(np.log1p(np.exp(-(y(u[p], item[p]) - y(u[p], ad_item[j])))) for p, j in zip(pos_np, neg_np, strict=True))
    loss_sum, pairs, extras = bpr_objective(model, {**inputs, PAIR_USER_KEY: meta["user_id"]}, labels)
    assert float(pairs) == len(pos_np)
    assert float(loss_sum) == pytest.approx(float(expected), rel=1e-4)
    assert float(tf.reduce_sum(extras["positives"] + extras["negatives"])) == labels.shape[0]


def test_training_with_sampled_negatives_runs_and_lowers_the_loss(data_dir, tmp_path):
    config = _config("dvbpr", negatives="sampled", steps=8, log_every=4, checkpoint_every=8, learning_rate=0.05)
    result = train(config, data_dir, str(tmp_path), log=None)
    losses = [h["loss"] for h in result["history"]]
    assert result["loss_name"] == "bpr_loss" and all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_cold_ads_can_be_those_with_fewer_than_five_train_impressions(tmp_path):
    from tfvctr import layout
    from tfvctr.evaluation import read_cold_ads

    rows = [("a", 0), ("b", 1), ("c", 4), ("d", 5), ("e", 40)]
    (tmp_path / layout.AD_COUNTS).write_text("".join(json.dumps({"ad_id": a, "train_impressions": n}) + "\n" for a, n in rows))
    assert read_cold_ads(str(tmp_path)) == {"a"}  # never in training
    assert read_cold_ads(str(tmp_path), below=5) == {"a", "b", "c"}  # CSCNN §4.1: < 5 interactions


# ------------------------------------------------------------ negatives the user never clicked in training


def _train_clicks(config, data_dir):
    """(user, ad) of every train click, read through the input pipeline (the reference)."""
    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    clicks = set()
    for inputs, labels, meta in data.make_dataset(config, data_dir, training=False, encoder=enc, with_meta=True):
        ads = meta["ad_id"].numpy()[inputs["ad_index"].numpy()]
        for user, ad, label in zip(meta["user_id"].numpy(), ads, labels.numpy(), strict=True):
            if label > 0:
                clicks.add((user.decode(), ad.decode()))
    return clicks


def test_click_history_holds_the_train_splits_clicks(data_dir):
    from tfvctr.models.losses import ClickHistory

    config = _config("bpr_mf", negatives="sampled")
    clicks = _train_clicks(config, data_dir)
    history = ClickHistory.from_files(data.list_shards(data_dir, "train"), config.dataset)
    assert history.size == len(clicks) > 0
    users = sorted({u for u, _ in clicks} | {"nobody"})
    ads = sorted({a for _, a in clicks} | {"ad999"})
    grid = history.interacted(tf.constant(users), tf.constant(ads)).numpy()
    assert grid.tolist() == [[(u, a) in clicks for a in ads] for u in users]


def test_sampled_negatives_skip_ads_the_user_clicked_outside_the_batch():
    from tfvctr.models.losses import sampled_negative_pairs

    labels = tf.constant([1, 0, 1], tf.float32)
    users = tf.constant(["a", "a", "b"])
    ad_index = tf.constant([0, 1, 1])
    # a clicked ad 2 on another day; b clicked ads 0 and 3 on other days.
    interacted = tf.constant([[False, False, True, False], [False, False, True, False], [True, False, False, True]])
    drawn = collections.defaultdict(set)
    for order in itertools.permutations(range(4)):  # other batch layouts, other draws
        perm = tf.constant(order, tf.int32)
        batch_interacted = tf.gather(interacted, np.argsort(perm.numpy()), axis=1)  # column perm[o] is ad o
        pos, neg = sampled_negative_pairs(labels, users, tf.gather(perm, ad_index), 4, batch_interacted)
        for p, j in zip(pos.numpy(), neg.numpy(), strict=True):
            drawn[users.numpy()[p].decode()].add(int(np.arange(4)[perm.numpy() == j][0]))  # back to the original ad
    assert drawn == {"a": {1, 3}, "b": {2}}  # never the batch click nor a train click


def test_the_trainers_negatives_are_never_ads_the_user_clicked_in_training(data_dir):
    from tfvctr.models.losses import sampled_negative_pairs
    from tfvctr.training.loop import PAIR_AD_KEY, pairwise_objective

    config = _config("bpr_mf", negatives="sampled", ads_per_batch=8)
    clicks = _train_clicks(config, data_dir)
    objective = pairwise_objective(config, data.list_shards(data_dir, "train"))
    assert objective.history.size == len(clicks)
    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    keras.utils.set_random_seed(0)
    batches = with_pair_users(data.make_dataset(config, data_dir, encoder=enc, with_meta=True)).take(12)
    old_way_hits, pairs = 0, 0
    for inputs, labels in batches:
        users, ads, n = inputs[PAIR_USER_KEY], inputs[PAIR_AD_KEY].numpy(), inputs["image"].shape[0]
        interacted = objective.history.interacted(users, inputs[PAIR_AD_KEY])
        for history in (None, interacted):
            pos, neg = sampled_negative_pairs(labels, users, inputs["ad_index"], n, history)
            hits = sum((users.numpy()[p].decode(), ads[j].decode()) in clicks for p, j in zip(pos.numpy(), neg.numpy(), strict=True))
            if history is None:
                old_way_hits += hits
            else:
                assert hits == 0
                pairs += len(pos)
    assert pairs > 0
    assert old_way_hits > 0  # batch-only exclusion does draw ads the user clicked on other days
