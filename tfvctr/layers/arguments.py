"""Constructor arguments of the tfvctr layers and heads: checked with Keras' wording, and
given back by `get_config` (each is kept as an attribute of the same name, so a layer lists
the names once)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def attribute_config(layer: Any, names: Iterable[str]) -> dict[str, Any]:
    """`{name: layer.<name>}` for each name: the part of `get_config` that needs no serializing.

    >>> class Head:
    ...     units, seed = 8, 3
    >>> attribute_config(Head(), ("units", "seed"))
    {'units': 8, 'seed': 3}
    """
    return {name: getattr(layer, name) for name in names}


def invalid_argument(name: str, value: Any, expected: str) -> ValueError:
    """The error for a bad argument, in Keras' wording (raise it).

    >>> invalid_argument("units", 0, "a positive integer")
    ValueError('Invalid value received for argument `units`. Expected a positive integer. Received: units=0')
    """
    return ValueError(f"Invalid value received for argument `{name}`. Expected {expected}. Received: {name}={value}")


def check_rate(name: str, value: float) -> None:
    """A dropout rate: ValueError unless 0 <= value < 1.

    >>> check_rate("dropout", 1.0)
    Traceback (most recent call last):
    ...
    ValueError: Invalid value received for argument `dropout`. Expected a value in [0, 1). Received: dropout=1.0
    """
    if not 0.0 <= value < 1.0:
        raise invalid_argument(name, value, "a value in [0, 1)")


def check_layer_sizes(name: str, sizes: Sequence[int], expected: str = "a non-empty list of positive integers") -> None:
    """Layer widths: ValueError unless a non-empty list of positive integers (`expected` words the message).

    >>> check_layer_sizes("deep_layers", [16, 0])
    Traceback (most recent call last):
    ...
    ValueError: Invalid value received for argument `deep_layers`. Expected a non-empty list of positive integers. Received: deep_layers=[16, 0]
    """
    if not sizes or any(int(u) < 1 for u in sizes):
        raise invalid_argument(name, list(sizes), expected)
