"""TF Serving's `PredictionLog` and friends as protobuf classes, without `tensorflow-serving-api`.

`tensorflow-serving-api` (PyPI) requires the `tensorflow` package, which would install a
second TensorFlow beside `tensorflow-cpu`. The warmup file only needs four small messages,
so they are declared here with the field numbers of the public protos
(`tensorflow_serving/apis/prediction_log.proto`, `predict.proto`, `model.proto`) on top
of TensorFlow's own `TensorProto`, in a private descriptor pool (no clash if the real
package is imported too). Bytes written with them parse with the real classes: only the
fields below are set, and their numbers and types are the public ones.

    PredictionLog { predict_log = 6 }                 (log_metadata = 1, other logs unused)
    PredictLog    { request = 1 }                     (response = 2 unused)
    PredictRequest { model_spec = 1; map<string, TensorProto> inputs = 2 }
    ModelSpec     { name = 1; google.protobuf.Int64Value version = 2; signature_name = 3 }
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
from tensorflow.core.framework import tensor_pb2

_PACKAGE = "tensorflow.serving"
_FILE = "tfvctr/export/tensorflow_serving_subset.proto"
F = descriptor_pb2.FieldDescriptorProto


def _field(message: Any, name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> None:
    f = message.field.add(name=name, number=number, type=kind,
                          label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
    if type_name:
        f.type_name = type_name


@functools.lru_cache(maxsize=1)
def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    # TensorProto's file and its imports, then the wrapper types, then our subset.
    for module in (wrappers_pb2, *_tensor_files()):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    fd = descriptor_pb2.FileDescriptorProto(name=_FILE, package=_PACKAGE, syntax="proto3",
                                            dependency=[tensor_pb2.DESCRIPTOR.name, wrappers_pb2.DESCRIPTOR.name])
    spec = fd.message_type.add(name="ModelSpec")
    _field(spec, "name", 1, F.TYPE_STRING)
    _field(spec, "version", 2, F.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    _field(spec, "signature_name", 3, F.TYPE_STRING)
    request = fd.message_type.add(name="PredictRequest")
    _field(request, "model_spec", 1, F.TYPE_MESSAGE, f".{_PACKAGE}.ModelSpec")
    entry = request.nested_type.add(name="InputsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_MESSAGE, ".tensorflow.TensorProto")
    _field(request, "inputs", 2, F.TYPE_MESSAGE, f".{_PACKAGE}.PredictRequest.InputsEntry", repeated=True)
    log = fd.message_type.add(name="PredictLog")
    _field(log, "request", 1, F.TYPE_MESSAGE, f".{_PACKAGE}.PredictRequest")
    prediction_log = fd.message_type.add(name="PredictionLog")
    _field(prediction_log, "predict_log", 6, F.TYPE_MESSAGE, f".{_PACKAGE}.PredictLog")
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in ("ModelSpec", "PredictRequest", "PredictLog", "PredictionLog")}


def _tensor_files() -> list[Any]:
    from tensorflow.core.framework import resource_handle_pb2, tensor_shape_pb2, types_pb2

    return [tensor_shape_pb2, types_pb2, resource_handle_pb2, tensor_pb2]


def prediction_log_class() -> Any:
    """The `tensorflow.serving.PredictionLog` message class (subset, see the module docstring)."""
    return _classes()["PredictionLog"]


def predict_log_record(model_name: str, signature_name: str, inputs: dict[str, Any]) -> bytes:
    """One serialised `PredictionLog` holding a `PredictRequest` of `inputs` (name → numpy array)."""
    import tensorflow as tf

    log = _classes()["PredictionLog"]()
    request = log.predict_log.request
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        # Another pool's TensorProto class: copy through the wire format.
        request.inputs[name].ParseFromString(tf.make_tensor_proto(value).SerializeToString())
    return log.SerializeToString(deterministic=True)


def parse_prediction_log(data: bytes) -> tuple[str, dict[str, Any]]:
    """`(signature_name, {input name: numpy array})` of a serialised `PredictionLog`."""
    import tensorflow as tf

    log = _classes()["PredictionLog"].FromString(data)
    request = log.predict_log.request
    return request.model_spec.signature_name, {
        k: tf.make_ndarray(tensor_pb2.TensorProto.FromString(v.SerializeToString())) for k, v in request.inputs.items()}
