"""TF Serving's REST API, request to response, independent of the HTTP stack.

Everything here follows the tensorflow/serving source, file by file:

* routes and "Malformed request": `model_servers/http_rest_api_util.cc`
  (`kPredictionApiGegex`, `kModelStatusApiRegex`, `ParseModelInfo`) and
  `http_rest_api_handler.cc` (`ProcessRequest`);
* JSON to tensors and back: `util/json_tensor.cc` (`FillPredictRequestFromJson`,
  `FillTensorProto`, `AddValueToTensor`, `IsLosslessDecimal`, `WriteDecimal`,
  `MakeRowFormatJsonFromTensors`, `MakeColumnarFormatJsonFromTensors`);
* error codes to HTTP statuses: `model_servers/http_server.cc` (`ToHTTPStatusCode`);
* status and metadata documents: `apis/get_model_status.proto` and `ToJsonString` in
  `http_rest_api_util.cc` (the metadata's doubled `signature_def` key comes from there);
* `:classify` / `:regress`: `servables/tensorflow/classifier.cc`, `regressor.cc`
  (`PreProcessClassification`, `PreProcessRegression`).

Messages are TF Serving's, word for word where a client might match on them. Checks run
in TF Serving's order (parse, signature_name, model/version lookup, signature lookup,
then `instances`/`inputs`), so the same bad request gets the same answer from both
servers. `process()` never raises: a bug becomes a JSON 500 (INTERNAL), a client's
mistake a 4xx.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import urllib.parse
from typing import Any, Protocol

import numpy as np
from google.protobuf import json_format

# ------------------------------------------------------------------ status codes
# absl/TF canonical codes (tensorflow/core/protobuf/error_codes.proto).
CODE_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
    11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}
# http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class RestError(Exception):
    """A non-OK status: `code` is the canonical code name, `message` TF Serving's text."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_string(self) -> str:
        """absl::Status::ToString(): what TF Serving embeds when it wraps an error."""
        return f"{self.code}: {self.message}"


def invalid(message: str) -> RestError:
    return RestError("INVALID_ARGUMENT", message)


def error_body(message: str) -> str:
    """MakeJsonFromStatus: `{"error": "<message>"}`."""
    return json.dumps({"error": message})


# ------------------------------------------------------------------ the model side
class Servable(Protocol):
    """One loaded version (implemented by `serving.servables.SavedModelServable`)."""

    name: str
    version: int
    signature_defs: dict  # signature name -> tensorflow.core.protobuf.meta_graph_pb2.SignatureDef

    def run(self, signature_name: str, feeds: dict[str, np.ndarray], timeout_ms: int) -> dict[str, np.ndarray]: ...


class Manager(Protocol):
    """What the REST handler asks of the model manager (`serving.servables.ModelManager`)."""

    def acquire(self, name: str, version: int | None, label: str | None) -> Any:
        """A context manager yielding a `Servable`; raises RestError (NOT_FOUND / INVALID_ARGUMENT)."""

    def version_states(self, name: str, version: int | None, label: str | None) -> list[tuple[int, str, str, str]]:
        """[(version, state, error_code, error_message)], newest first; raises RestError."""


# ------------------------------------------------------------------ routes
_V1 = re.compile(r"/v1/.*", re.IGNORECASE | re.ASCII)
_PREDICT = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE | re.ASCII)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE | re.ASCII)
_INT64_MAX = 2**63 - 1
DEFAULT_SIGNATURE = "serving_default"


def is_rest_path(path: str) -> bool:
    """Whether TF Serving's REST handler owns `path` (`(?i)/v1/.*`); other paths get the HTTP server's 404."""
    return _V1.fullmatch(path) is not None


def _version(s: str | None) -> int | None:
    if not s:
        return None
    v = int(s)
    if v > _INT64_MAX:  # absl::SimpleAtoi into int64_t fails
        raise invalid(f"Failed to convert version: {s} to numeric.")
    return v


def process(http_method: str, path: str, body: bytes, manager: Manager, timeout_ms: int = 30_000) -> tuple[int, str]:
    """Answers one request under `/v1/` as TF Serving does: (HTTP status, JSON body).

    `path` is the raw (still percent-encoded) path without the query string.
    """
    try:
        return 200, _dispatch(http_method, path, body, manager, timeout_ms)
    except RestError as e:
        return e.http_status, error_body(e.message)
    except Exception as e:  # a bug here must still answer in JSON, as INTERNAL
        return 500, error_body(f"Internal error: {type(e).__name__}: {e}")


def _dispatch(http_method: str, path: str, body: bytes, manager: Manager, timeout_ms: int) -> str:
    malformed = invalid(f"Malformed request: {http_method} {path}")
    if http_method == "POST":
        m = _PREDICT.fullmatch(path)
        if not m:
            raise malformed
        name, ver, label, method = m.groups()
    elif http_method == "GET":
        m = _STATUS.fullmatch(path)
        if not m:
            raise malformed
        name, ver, label, sub = m.groups()
    else:
        raise malformed
    name = urllib.parse.unquote(name or "")
    version = _version(ver)
    label = urllib.parse.unquote(label) if label else None
    if http_method == "POST":
        # The regex is case-insensitive but the dispatch compares exactly (ProcessRequest),
        # so ":PREDICT" parses yet stays a malformed request.
        if method == "predict":
            return _predict(name, version, label, body, manager, timeout_ms)
        if method in ("classify", "regress"):
            return _classify_regress(method, name, version, label, body, manager)
        raise malformed
    if not name:
        raise invalid("Missing model name in request.")
    # "/METADATA" matches the case-insensitive regex but the comparison is exact, so
    # TF Serving answers it with the status document; so do we.
    if sub == "metadata":
        return _metadata(name, version, label, manager)
    return _status(name, version, label, manager)


# ------------------------------------------------------------------ JSON values
_RAPIDJSON_ERRORS = [
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Expecting ',' delimiter", "Missing a comma or ']' after an array element."),
    ("Extra data", "The document root must not be followed by other values."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid control character", "Invalid encoding in string."),
]


def parse_json(body: bytes) -> dict:
    """ParseJson: rapidjson with NaN/Infinity allowed; the top level must be an object."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None
    if not text.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        msg = next((r for p, r in _RAPIDJSON_ERRORS if e.msg.startswith(p)), e.msg + ".")
        raise invalid(f"JSON Parse error: {msg} at offset: {e.pos}") from None
    except RecursionError:
        raise invalid("JSON Parse error: Nesting too deep.") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {jstr(doc)} Is not object")
    return doc


def jstr(val: Any) -> str:
    """JsonValueToString: the value as rapidjson's PrettyWriter writes it (4-space indent)."""
    if isinstance(val, float) and not isinstance(val, bool):
        return format_double(val)
    return json.dumps(val, indent=4, ensure_ascii=False, allow_nan=True)


def json_type(val: Any) -> str:
    if val is None:
        return "Null"
    if val is True:
        return "True"
    if val is False:
        return "False"
    if isinstance(val, dict):
        return "Object"
    if isinstance(val, list):
        return "Array"
    if isinstance(val, str):
        return "String"
    return "Number"


# DataType enum values (tensorflow/core/framework/types.proto) and DataTypeString names.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING, DT_INT64, DT_BOOL = 1, 2, 3, 4, 5, 6, 7, 9, 10
DT_UINT32, DT_UINT64 = 22, 23
DTYPE_STRING = {
    1: "float", 2: "double", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 8: "complex64", 9: "int64",
    10: "bool", 14: "bfloat16", 17: "uint16", 19: "half", 22: "uint32", 23: "uint64",
}
NUMPY_DTYPE = {
    DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8, DT_INT16: np.int16,
    DT_INT8: np.int8, DT_STRING: object, DT_INT64: np.int64, DT_BOOL: np.bool_, DT_UINT32: np.uint32, DT_UINT64: np.uint64,
}
_INT_RANGE = {
    DT_INT32: (-(2**31), 2**31 - 1), DT_INT16: (-(2**31), 2**31 - 1), DT_INT8: (-(2**31), 2**31 - 1),
    DT_UINT8: (-(2**31), 2**31 - 1), DT_INT64: (-(2**63), 2**63 - 1), DT_UINT32: (0, 2**32 - 1), DT_UINT64: (0, 2**64 - 1),
}
_F32_MAX = float(np.finfo(np.float32).max)


def _dtype_name(dtype: int) -> str:
    return DTYPE_STRING.get(dtype, f"type{dtype}")


def _type_error(val: Any, dtype: int) -> RestError:
    return invalid(f"JSON Value: {jstr(val)} Type: {json_type(val)} is not of expected type: {_dtype_name(dtype)}")


def _is_number(val: Any) -> bool:
    return isinstance(val, (int, float)) and not isinstance(val, bool)


def _lossless(val: Any, digits: int, fmax: float) -> bool:
    """IsLosslessDecimal: integers must fit the mantissa; decimals the range."""
    if isinstance(val, int) and -(2**63) <= val < 2**64:
        return abs(val) <= (1 << digits) - 1
    v = float(val)
    return (not math.isfinite(v)) or (-fmax <= v <= fmax)


def is_b64_object(val: Any) -> bool:
    return isinstance(val, dict) and len(val) == 1 and isinstance(val.get("b64"), str)


def _b64decode(val: Any) -> bytes:
    if not is_b64_object(val):
        raise invalid(f"JSON Value: {jstr(val)} not formatted correctly for base64 data")
    s = val["b64"]
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _utf8(s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (\ud800): rapidjson rejects it while parsing
        raise invalid("JSON Parse error: The surrogate pair in string is invalid.") from None


def _convert(val: Any, dtype: int) -> Any:
    """AddValueToTensor for one JSON leaf."""
    if dtype == DT_FLOAT or dtype == DT_DOUBLE:
        if not _is_number(val):
            raise _type_error(val, dtype)
        digits, fmax, target = (24, _F32_MAX, "float") if dtype == DT_FLOAT else (53, float(np.finfo(np.float64).max), "double")
        if not _lossless(val, digits, fmax):
            raise invalid(f"Cannot convert JSON value: {jstr(val)} to {target} without loss of precision.")
        return float(val)
    if dtype == DT_STRING:
        if not isinstance(val, str):
            raise _type_error(val, dtype)
        return _utf8(val)
    if dtype == DT_BOOL:
        if not isinstance(val, bool):
            raise _type_error(val, dtype)
        return val
    if dtype in _INT_RANGE:
        lo, hi = _INT_RANGE[dtype]
        if not (isinstance(val, int) and not isinstance(val, bool) and lo <= val <= hi):
            raise _type_error(val, dtype)
        return val
    raise RestError("UNIMPLEMENTED", f"Conversion of JSON Value: {jstr(val)} to type: {_dtype_name(dtype)}")


def _dense_shape(val: Any) -> list[int]:
    """GetDenseTensorShape: follow the first element of each nested list."""
    shape = []
    while isinstance(val, list):
        shape.append(len(val))
        if not val:
            break
        val = val[0]
    return shape


def _fill(val: Any, level: int, dtype: int, shape: list[int], out: list) -> None:
    """FillTensorProto: every leaf at depth rank, every list of the size the shape says."""
    rank = len(shape)
    if not isinstance(val, list):
        if level != rank:
            raise invalid(f"JSON Value: {jstr(val)} found at incorrect level: {level + 1} in the JSON DOM. Expected at level: {rank}")
        if isinstance(val, dict):
            if dtype != DT_STRING:
                raise _type_error(val, dtype)
            out.append(_b64decode(val))
        else:
            out.append(_convert(val, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(val) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(val)} at level: {level} expected size: {shape[level]}")
    for v in val:
        _fill(v, level + 1, dtype, shape, out)


def _to_array(values: list, shape: list[int], dtype: int) -> np.ndarray:
    if dtype == DT_STRING:
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr.reshape(shape)
    return np.asarray(values, dtype=NUMPY_DTYPE[dtype]).reshape(shape)


def _input_dtypes(signature) -> dict[str, int]:
    return {k: int(v.dtype) for k, v in signature.inputs.items()}


def _fast_leaves(vals: list, dtype: int) -> np.ndarray | None:
    """The common well-typed case in one pass, or None for the exact (slow) path.

    Accepts only what the exact path accepts and gives the same array; everything else
    (ints for floats beyond 2**24, b64 objects, nested lists, wrong types) returns None,
    and the exact path then produces TF Serving's result or error message.
    """
    if dtype == DT_STRING:
        if all(type(v) is str for v in vals):
            arr = np.empty(len(vals), dtype=object)
            arr[:] = [_utf8(v) for v in vals]
            return arr
        return None
    if dtype == DT_FLOAT or dtype == DT_DOUBLE:
        if not all(type(v) is float or (type(v) is int and -16777215 <= v <= 16777215) for v in vals):
            return None
        a = np.asarray(vals, dtype=np.float64)
        if dtype == DT_FLOAT:
            with np.errstate(invalid="ignore"):
                if np.any(np.isfinite(a) & (np.abs(a) > _F32_MAX)):
                    return None
            return a.astype(np.float32)
        return a
    if dtype == DT_BOOL:
        return np.asarray(vals, dtype=np.bool_) if all(type(v) is bool for v in vals) else None
    if dtype in _INT_RANGE:
        lo, hi = _INT_RANGE[dtype]
        if vals and all(type(v) is int for v in vals) and lo <= min(vals) and max(vals) <= hi:
            return np.asarray(vals, dtype=NUMPY_DTYPE[dtype])
    return None


def _fast_column(col: list, dtype: int) -> np.ndarray | None:
    """A batch of scalars or of equal-length flat lists, else None."""
    if not col:
        return None
    if type(col[0]) is list:
        width = len(col[0])
        if width == 0 or not all(type(v) is list and len(v) == width for v in col):
            return None
        arr = _fast_leaves([x for v in col for x in v], dtype)
        return None if arr is None else arr.reshape(len(col), width)
    return _fast_leaves(col, dtype)


def _fast_instances(instances: list, dtypes: dict[str, int]) -> dict[str, np.ndarray] | None:
    keys = dtypes.keys()
    for r in instances:
        if type(r) is not dict or len(r) != len(dtypes) or r.keys() != keys:
            return None
    out = {}
    for name, dtype in dtypes.items():
        arr = _fast_column([r[name] for r in instances], dtype)
        if arr is None:
            return None
        out[name] = arr
    return out


def tensors_from_instances(instances: list, dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList: row format, batched along a new first dimension."""
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors required as per tensorinfo_map")

    def is_element_object(v):
        return isinstance(v, dict) and not is_b64_object(v)

    objects = is_element_object(instances[0])
    if objects:
        fast = _fast_instances(instances, dtypes)
        if fast is not None:
            return fast
    names = sorted(dtypes)
    values: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add(item, name):
        if name not in dtypes:
            raise invalid(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        out: list = []
        _fill(item, 0, dtypes[name], shape, out)
        if name not in sizes:
            sizes[name], shapes[name] = len(out), shape
        elif sizes[name] != len(out):
            raise invalid(f"Expecting tensor size: {sizes[name]} but got: {len(out)}")
        elif shapes[name] != shape:
            raise invalid(f"Expecting shape [{','.join(map(str, shapes[name]))}] but got: [{','.join(map(str, shape))}]")
        values.setdefault(name, []).extend(out)

    for i, elem in enumerate(instances):
        if objects:
            if not is_element_object(elem):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            for key, item in elem.items():
                try:
                    add(item, key)
                except RestError as e:
                    raise invalid(f"Failed to process element: {i} key: {key} of 'instances' list. Error: {e.to_string()}") from None
            if set(elem) != set(names):
                raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: {jstr(elem)} must only have keys: {','.join(names)}")
        else:
            if is_element_object(elem):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
            try:
                add(elem, names[0])
            except RestError as e:
                raise invalid(f"Failed to process element: {i} of 'instances' list. Error: {e.to_string()}") from None
    n = len(instances)
    return {k: _to_array(v, [n, *shapes[k]], dtypes[k]) for k, v in values.items()}


def tensors_from_inputs(val: Any, dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: columnar format; names the signature lacks are ignored."""

    def one(v, dtype):
        fast = _fast_column(v, dtype) if type(v) is list else None
        if fast is not None:
            return fast
        shape = _dense_shape(v)
        out: list = []
        _fill(v, 0, dtype, shape, out)
        return _to_array(out, shape, dtype)

    if not isinstance(val, dict) or is_b64_object(val):
        if len(dtypes) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map")
        (name, dtype), = dtypes.items()
        return {name: one(val, dtype)}
    tensors = {}
    for name in sorted(dtypes):
        if name not in val:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = one(val[name], dtypes[name])
    return tensors


# ------------------------------------------------------------------ numbers out
def _write_decimal(v: float, as_stored, max_digits: int) -> str:
    """WriteDecimal: %g, else `max_digits` digits if %g does not read back as the same
    `as_stored` value, '.0' on whole numbers; NaN and the infinities as rapidjson writes them."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "-Infinity" if v < 0 else "Infinity"
    s = "%g" % v
    if as_stored(float(s)) != as_stored(v):
        s = "%.*g" % (max_digits, v)
    if "." not in s and "e" not in s:
        s += ".0"
    return s


def format_float(v: float) -> str:
    """WriteDecimal<float>: 9 digits if %g does not round-trip through float32."""
    return _write_decimal(v, np.float32, 9)


def format_double(v: float) -> str:
    """WriteDecimal<double>: as format_float with 17 digits."""
    return _write_decimal(v, float, 17)


def format_floats(arr: np.ndarray) -> list[str]:
    """`format_float` / `format_double` over a whole array, vectorised where it counts.

    "%g" per value, then one numpy comparison finds the strings that do not round-trip;
    only these are redone with max_digits10 (9 for float32, 17 for float64).
    """
    flat = arr.reshape(-1)
    values = flat.astype(np.float64).tolist()
    strs = ["%g" % v for v in values]
    if not strs:
        return strs
    back = np.array(list(map(float, strs)), dtype=np.float64).astype(flat.dtype)
    digits = "%.9g" if flat.dtype == np.float32 else "%.17g"
    for i in np.nonzero(back != flat)[0].tolist():  # NaN != NaN: replaced below anyway
        strs[i] = digits % values[i]
    # Whole numbers get ".0" ("nan"/"inf" contain an "n" and are replaced next).
    strs = [x if ("." in x or "e" in x or "n" in x) else x + ".0" for x in strs]
    finite = np.isfinite(flat)
    if not finite.all():
        for i in np.nonzero(~finite)[0].tolist():
            v = values[i]
            strs[i] = "NaN" if v != v else ("-Infinity" if v < 0 else "Infinity")
    return strs


def _leaves(arr: np.ndarray, as_bytes: bool) -> list[str]:
    """Every element of `arr` (flattened, C order) as its JSON token (AddSingleValueAndAdvance)."""
    kind = arr.dtype
    if kind == np.float32 or kind == np.float64:
        return format_floats(arr)
    flat = arr.reshape(-1)
    if kind == np.bool_:
        return ["true" if x else "false" for x in flat.tolist()]
    if np.issubdtype(kind, np.integer):
        return [str(x) for x in flat.tolist()]
    if kind.kind in ("O", "S", "U"):
        items = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in flat.tolist()]
        if as_bytes:
            return ['{"b64": "%s"}' % base64.b64encode(x).decode("ascii") for x in items]
        # rapidjson writes the raw bytes; JSON text must be UTF-8, so invalid bytes become U+FFFD.
        return [json.dumps(x.decode("utf-8", "replace"), ensure_ascii=False) for x in items]
    raise invalid(f"Failed to write JSON value for tensor type: {kind}")


def _nest(tokens: list[str], shape: tuple[int, ...]) -> str:
    """AddTensorValues: tokens (C order) as nested JSON lists of `shape` (a scalar for ())."""
    if not shape:
        return tokens[0]
    if len(shape) == 1:
        return "[" + ", ".join(tokens) + "]"
    step = len(tokens) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(tokens[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def json_from_tensors(outputs: dict[str, np.ndarray], row_format: bool) -> str:
    """MakeJsonFromTensors: `predictions` (row) or `outputs` (columnar); one output is unnamed."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    tokens = {n: _leaves(outputs[n], outputs[n].dtype == object and n.endswith("_bytes")) for n in names}
    if not row_format:
        if len(names) == 1:
            return '{"outputs": ' + _nest(tokens[names[0]], outputs[names[0]].shape) + "}"
        parts = [json.dumps(n) + ": " + _nest(tokens[n], outputs[n].shape) for n in names]
        return '{"outputs": {' + ", ".join(parts) + "}}"
    batch = 0
    for n in names:
        t = outputs[n]
        if t.ndim == 0:
            raise invalid(f"Tensor name: {n} has no shape information ")
        if t.shape[0] < 1:
            raise invalid(f"Tensor name: {n} has invalid batch size: {t.shape[0]}")
        if batch and t.shape[0] != batch:
            raise invalid(f"Tensor name: {n} has inconsistent batch size: {t.shape[0]} expecting: {batch}")
        batch = t.shape[0]
    if len(names) == 1:
        return '{"predictions": ' + _nest(tokens[names[0]], outputs[names[0]].shape) + "}"
    per_row = []
    for n in names:
        item = outputs[n].shape[1:]
        if not item:
            per_row.append(tokens[n])
        else:
            size = len(tokens[n]) // batch
            per_row.append([_nest(tokens[n][i * size:(i + 1) * size], item) for i in range(batch)])
    template = "{" + ", ".join(json.dumps(n).replace("%", "%%") + ": %s" for n in names) + "}"
    rows = [template % vals for vals in zip(*per_row, strict=True)]
    return '{"predictions": [' + ", ".join(rows) + "]}"


# ------------------------------------------------------------------ endpoints
def _signature(servable: Servable, signature_name: str):
    name = signature_name or DEFAULT_SIGNATURE
    sig = servable.signature_defs.get(name)
    if sig is None:
        raise invalid(f'Serving signature name: "{name}" not found in signature def')
    return sig


def _predict(name, version, label, body, manager: Manager, timeout_ms: int) -> str:
    doc = parse_json(body)
    signame = doc.get("signature_name", "")
    if not isinstance(signame, str):
        raise invalid(f"JSON Value: {jstr(doc)} not formatted correctly. 'signature_name' key must be a string value.")
    with manager.acquire(name, version, label) as servable:
        sig = _signature(servable, signame)
        dtypes = _input_dtypes(sig)
        if not dtypes:
            raise invalid(f"Failed to get input map for signature: {signame or 'DEFAULT'}")
        has_instances, has_inputs = "instances" in doc, "inputs" in doc
        if has_instances and has_inputs:
            raise invalid(f"JSON Value: {jstr(doc)} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
        if has_instances:
            inst = doc["instances"]
            if not isinstance(inst, list):
                raise invalid(f"JSON Value: {jstr(doc)} Excepting 'instances' to be an list/array")
            if not inst:
                raise invalid(f"JSON Value: {jstr(doc)} No values in 'instances' array")
            feeds = tensors_from_instances(inst, dtypes)
        elif has_inputs:
            feeds = tensors_from_inputs(doc["inputs"], dtypes)
        else:
            raise invalid("Missing 'inputs' or 'instances' key")
        outputs = servable.run(signame or DEFAULT_SIGNATURE, feeds, timeout_ms)
    return json_from_tensors(outputs, row_format=has_instances)


_CLASSIFY = "tensorflow/serving/classify"
_REGRESS = "tensorflow/serving/regress"


def _classify_regress(method, name, version, label, body, manager: Manager) -> str:
    """Validation as TF Serving runs it; a model without such signatures gets its answers.

    The dev server stops at running a real classify/regress signature (tf.Example
    inputs): our exports have none. That one case answers UNIMPLEMENTED (501).
    """
    doc = parse_json(body)
    signame = doc.get("signature_name", "")
    if not isinstance(signame, str):
        raise invalid(f"JSON Value: {jstr(doc)} not formatted correctly. 'signature_name' key must be a string value.")
    if "context" in doc and not isinstance(doc["context"], dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type(doc['context'])}")
    if "examples" not in doc:
        raise invalid(f"JSON Value: {jstr(doc)} When method is classify, key 'examples' is expected and was not found")
    if not isinstance(doc["examples"], list):
        raise invalid(f"JSON Value: {jstr(doc)} Expecting 'examples' value to be an list/array")
    if not doc["examples"]:
        raise invalid(f"JSON Value: {jstr(doc)} 'examples' value is an empty array")
    for ex in doc["examples"]:
        if not isinstance(ex, dict):
            raise invalid(f"Example must be JSON object but got JSON {json_type(ex)}")
    with manager.acquire(name, version, label) as servable:
        key = signame or DEFAULT_SIGNATURE
        sig = servable.signature_defs.get(key)
        if sig is None:
            raise invalid(f"No signature was found with the name: {key}")
        if len(sig.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        if method == "classify":
            if len(sig.outputs) not in (1, 2):
                raise invalid(f"Expected one or two output Tensors, found {len(sig.outputs)}")
            if "inputs" not in sig.inputs:
                raise invalid(f"No classification inputs found in SignatureDef: {sig}")
            if "classes" not in sig.outputs and "scores" not in sig.outputs:
                raise invalid(f'Expected classification signature outputs to contain at least one of "classes" or "scores". Signature was: {sig}')
        else:
            if len(sig.outputs) != 1:
                raise invalid("Expected one output Tensor.")
            if "inputs" not in sig.inputs:
                raise invalid(f"No regression inputs found in SignatureDef: {sig}")
            if "outputs" not in sig.outputs:
                raise invalid(f"No regression outputs found in SignatureDef: {sig}")
    raise RestError("UNIMPLEMENTED", f"tfvctr dev server: {method} signatures (tf.Example inputs) are not run; use real TF Serving")


def _status(name, version, label, manager: Manager) -> str:
    states = manager.version_states(name, version, label)
    doc = {
        "model_version_status": [
            {"version": str(v), "state": state, "status": {"error_code": code, "error_message": msg}}
            for v, state, code, msg in states
        ]
    }
    return json.dumps(doc, indent=1)


def _metadata(name, version, label, manager: Manager) -> str:
    with manager.acquire(name, version, label) as servable:
        sigs = {
            k: json_format.MessageToDict(v, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
            for k, v in servable.signature_defs.items()
        }
        doc = {
            "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": sigs}},
        }
    return json.dumps(doc, indent=1)
