"""The shared layer-contract check, modelled on `run_layer_test` in keras-team/keras
`keras/src/testing/test_case.py`.

One call checks everything every tfvctr layer promises, so each layer's own tests can
concentrate on the numbers:

* the output shape (or nested structure of shapes);
* `get_config` names every constructor argument with the value given, and
  `from_config(get_config())` gives a layer with the same config;
* the number of trainable and non-trainable weights;
* a save/load round trip: a tiny functional `keras.Model` around the layer is saved to a
  temporary `.keras` file, reloaded, and must give the same outputs;
* optionally one SGD step: every trainable weight gets a gradient and at least one
  changes.

How `input_data` reaches the layer:

* a tensor / array: `layer(x)`;
* a tuple: positional arguments, `layer(*input_data)` (e.g. `(feature_map, category_ids)`);
* a list: one argument holding a list of tensors, `layer([a, b])`;
* a dict: one argument holding a dict of tensors, `layer({"a": a, "b": b})`.

Usage::

    from tests.layer_testing import run_layer_test

    run_layer_test(
        MyLayer, {"units": 4}, np.ones((2, 3), "float32"),
        expected_output_shape=(2, 4), expected_num_trainable_weights=2,
    )
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

# Call arguments that control the mode, not the data: the functional model is built with
# them fixed and they are never turned into `keras.Input`s.
_MODE_KWARGS = ("training",)


def _to_tensor(x: Any) -> Any:
    return keras.tree.map_structure(lambda t: tf.convert_to_tensor(t), x)


def _call(layer: keras.layers.Layer, data: Any, kwargs: dict[str, Any]) -> Any:
    if isinstance(data, tuple):
        return layer(*data, **kwargs)
    return layer(data, **kwargs)


def _symbolic_inputs(data: Any) -> Any:
    """`keras.Input`s with the structure, trailing shape and dtype of `data`."""

    def make(t: tf.Tensor, name: Any = None) -> keras.KerasTensor:
        return keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype.name, batch_size=None, name=name)

    def named(x: Any, path: str) -> Any:
        # Inputs of a dict are named by their key path: a functional Model warns otherwise.
        if isinstance(x, dict):
            return {k: named(v, f"{path}{k}" if not path else f"{path}.{k}") for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(named(v, None) for v in x)
        return make(x, path or None)

    return named(data, "")


def _model_inputs(symbolic: Any) -> Any:
    # keras.Model takes a list or dict of inputs, not a tuple.
    return list(symbolic) if isinstance(symbolic, tuple) else symbolic


def _model_data(data: Any) -> Any:
    return list(data) if isinstance(data, tuple) else data


def _shape_of(t: Any) -> tuple:
    return tuple(int(d) for d in t.shape)


def _normalise(value: Any) -> Any:
    # A config round trip through JSON turns tuples into lists.
    if isinstance(value, tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _assert_shapes(output: Any, expected: Any) -> None:
    if isinstance(expected, dict):
        assert isinstance(output, dict), f"expected a dict output, received {type(output).__name__}"
        assert set(output) == set(expected), f"output keys {sorted(output)} != expected {sorted(expected)}"
        for key in expected:
            _assert_shapes(output[key], expected[key])
        return
    if isinstance(expected, list) or (
        isinstance(expected, tuple) and expected and isinstance(expected[0], (tuple, list))
    ):
        assert isinstance(output, (list, tuple)), f"expected a sequence of outputs, received {type(output).__name__}"
        assert len(output) == len(expected), f"{len(output)} outputs, expected {len(expected)}"
        for out, exp in zip(output, expected, strict=True):
            _assert_shapes(out, exp)
        return
    assert _shape_of(output) == tuple(expected), f"output shape {_shape_of(output)} != expected {tuple(expected)}"


def _assert_same_outputs(a: Any, b: Any, atol: float) -> None:
    flat_a, flat_b = keras.tree.flatten(a), keras.tree.flatten(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y), atol=atol, rtol=0)


def run_layer_test(
    layer_cls: type,
    init_kwargs: dict[str, Any],
    input_data: Any,
    expected_output_shape: Any,
    expected_num_trainable_weights: Optional[int] = None,
    expected_num_non_trainable_weights: Optional[int] = None,
    call_kwargs: Optional[dict[str, Any]] = None,
    run_training_step: bool = True,
    atol: float = 1e-6,
) -> keras.layers.Layer:
    """Checks the Keras layer contract of `layer_cls` and returns the built layer.

    Args:
        layer_cls: the layer class (must be registered for `.keras` reloading).
        init_kwargs: constructor arguments.
        input_data: a tensor, a tuple (positional arguments), a list or a dict (see the
            module docstring); the first axis is the batch.
        expected_output_shape: a shape tuple, or a list/dict of them for several outputs.
        expected_num_trainable_weights: checked when not None.
        expected_num_non_trainable_weights: checked when not None.
        call_kwargs: extra, non-tensor call arguments (e.g. `return_attention=True`); the
            saved model is built with the same values.
        run_training_step: whether to take one SGD step and check the weights move.
        atol: tolerance for "same output" after the save/load round trip.

    Returns:
        The layer instance that was built and checked, for further assertions.
    """
    call_kwargs = dict(call_kwargs or {})
    data = _to_tensor(input_data)

    # 1. Build by calling, check shapes.
    layer = layer_cls(**init_kwargs)
    output = _call(layer, data, call_kwargs)
    _assert_shapes(output, expected_output_shape)

    # 2. Config: every constructor argument comes back, and the round trip is stable.
    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert key in config, f"get_config() of {layer_cls.__name__} lacks the constructor argument {key!r}"
        # Initializers and the like given by name come back serialized (a dict): not compared.
        if _is_plain(value) and not (isinstance(value, str) and isinstance(config[key], dict)):
            assert _normalise(config[key]) == _normalise(value), (
                f"get_config()[{key!r}] = {config[key]!r}, constructed with {value!r}"
            )
    revived = layer_cls.from_config(config)
    assert _normalise(revived.get_config()) == _normalise(config), "from_config(get_config()) changed the config"

    # 3. Weight counts.
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights, (
            f"{len(layer.trainable_weights)} trainable weights "
            f"({[w.path for w in layer.trainable_weights]}), expected {expected_num_trainable_weights}"
        )
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, (
            f"{len(layer.non_trainable_weights)} non-trainable weights "
            f"({[w.path for w in layer.non_trainable_weights]}), expected {expected_num_non_trainable_weights}"
        )

    # 4. Save/load round trip through a functional model in a `.keras` file.
    symbolic = _symbolic_inputs(data)
    model_kwargs = {k: v for k, v in call_kwargs.items() if k not in _MODE_KWARGS}
    model = keras.Model(_model_inputs(symbolic), _call(layer, symbolic, model_kwargs))
    before = model(_model_data(data), training=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "layer_test.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
    after = reloaded(_model_data(data), training=False)
    _assert_same_outputs(before, after, atol)

    # 5. One training step: gradients reach every trainable weight and something moves.
    if run_training_step and layer.trainable_weights:
        weights = layer.trainable_weights
        with tf.GradientTape() as tape:
            out = _call(layer, data, {**call_kwargs, "training": True})
            floats = [t for t in keras.tree.flatten(out) if t.dtype.is_floating]
            assert floats, "the layer has trainable weights but no float output to train"
            # A sum of squares of every output: its gradient is non-zero wherever the
            # output depends on a weight.
            loss = tf.add_n([tf.reduce_mean(tf.square(tf.cast(t, "float32"))) for t in floats])
        grads = tape.gradient(loss, weights)
        missing = [w.path for w, g in zip(weights, grads, strict=True) if g is None]
        assert not missing, f"no gradient reaches these trainable weights: {missing}"
        old = [np.array(keras.ops.convert_to_numpy(w)) for w in weights]
        keras.optimizers.SGD(learning_rate=0.1).apply_gradients(zip(grads, weights, strict=True))
        moved = [not np.array_equal(o, keras.ops.convert_to_numpy(w)) for o, w in zip(old, weights, strict=True)]
        assert any(moved), "one SGD step changed no trainable weight"
    return layer
