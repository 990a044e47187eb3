"""One helper for initializer copies, shared by every tfvctr layer (house style)."""

from __future__ import annotations

from typing import Any, Optional

import keras


def clone_initializer(identifier: Any, seed: Optional[int] = None) -> keras.initializers.Initializer:
    """A fresh copy of an initializer, for one weight only; re-seeded when `seed` is given.

    A seeded Keras 3 initializer returns the same values on every call, so two weights
    sharing one instance (or one seed) would start equal: each weight gets its own copy,
    and a layer passes `seed + i` for its i-th weight.

    Args:
        identifier: anything `keras.initializers.get` accepts (name, config, instance).
        seed: the copy's seed; None keeps the original's.

    Returns:
        A new initializer instance.

    Example:

    >>> init = keras.initializers.GlorotUniform(seed=1)
    >>> a, b = clone_initializer(init, 5), clone_initializer(init, 6)
    >>> a is init, a.seed, b.seed
    (False, 5, 6)
    """
    init = keras.initializers.get(identifier)
    config = init.get_config()
    if seed is not None and "seed" in config:
        config["seed"] = seed
    return init.__class__.from_config(config)
