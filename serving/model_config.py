"""TF Serving's `--model_config_file` (a `ModelServerConfig` text proto), read by the dev server.

One `models.config` drives both servers, so the dev server parses the very same text
format with `google.protobuf.text_format`. The messages are declared here rather than
imported from `tensorflow-serving-api`: that wheel (2.21.0) requires `tensorflow` (the
full GPU-capable wheel), which would install a second TensorFlow beside `tensorflow-cpu`.
The declarations below use TF Serving's package (`tensorflow.serving`), message names,
field names and field numbers (`tensorflow_serving/config/model_server_config.proto`,
`file_system_storage_path_source.proto`), for the subset the dev server honours: names,
base paths, platform, version policy and version labels. A field outside that subset
(say `logging_config`) is a parse error naming the field, not silently ignored.

Example:

    >>> cfg = parse_model_config_text('''
    ... model_config_list {
    ...   config {
    ...     name: "ctr"
    ...     base_path: "/models/ctr"
    ...     model_platform: "tensorflow"
    ...     model_version_policy { specific { versions: 1 versions: 2 } }
    ...     version_labels { key: "stable" value: 1 }
    ...   }
    ... }''')
    >>> cfg[0].name, cfg[0].policy, cfg[0].versions, cfg[0].labels
    ('ctr', 'specific', (1, 2), {'stable': 1})
"""

from __future__ import annotations

import dataclasses
import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from tfvctr.errors import ConfigError

_F = descriptor_pb2.FieldDescriptorProto


def _field(msg, name: str, number: int, ftype: int, label: int = _F.LABEL_OPTIONAL, type_name: str = "", oneof=None):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    return f


def _build_pool() -> descriptor_pool.DescriptorPool:
    # A private pool: TF or another library may register the real `tensorflow.serving`
    # messages in the default pool; ours must not collide with them.
    pool = descriptor_pool.DescriptorPool()
    fd = descriptor_pb2.FileDescriptorProto(name="tfvctr/serving/model_server_config.proto", package="tensorflow.serving", syntax="proto3")

    src = fd.message_type.add(name="FileSystemStoragePathSourceConfig")
    pol = src.nested_type.add(name="ServableVersionPolicy")
    pol.oneof_decl.add(name="policy_choice")
    latest = pol.nested_type.add(name="Latest")
    _field(latest, "num_versions", 1, _F.TYPE_UINT32)
    pol.nested_type.add(name="All")
    specific = pol.nested_type.add(name="Specific")
    _field(specific, "versions", 1, _F.TYPE_INT64, _F.LABEL_REPEATED)
    prefix = ".tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy"
    _field(pol, "latest", 100, _F.TYPE_MESSAGE, type_name=prefix + ".Latest", oneof=0)
    _field(pol, "all", 101, _F.TYPE_MESSAGE, type_name=prefix + ".All", oneof=0)
    _field(pol, "specific", 102, _F.TYPE_MESSAGE, type_name=prefix + ".Specific", oneof=0)

    mc = fd.message_type.add(name="ModelConfig")
    entry = mc.nested_type.add(name="VersionLabelsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_INT64)
    _field(mc, "name", 1, _F.TYPE_STRING)
    _field(mc, "base_path", 2, _F.TYPE_STRING)
    _field(mc, "model_platform", 4, _F.TYPE_STRING)
    _field(mc, "model_version_policy", 7, _F.TYPE_MESSAGE, type_name=prefix)
    _field(mc, "version_labels", 8, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".tensorflow.serving.ModelConfig.VersionLabelsEntry")

    mcl = fd.message_type.add(name="ModelConfigList")
    _field(mcl, "config", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".tensorflow.serving.ModelConfig")

    msc = fd.message_type.add(name="ModelServerConfig")
    msc.oneof_decl.add(name="config")
    _field(msc, "model_config_list", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.serving.ModelConfigList", oneof=0)
    pool.Add(fd)
    return pool


_POOL = _build_pool()
ModelServerConfig = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.serving.ModelServerConfig"))


@dataclasses.dataclass(frozen=True)
class ModelSpecConfig:
    """One served model: what `config { ... }` says, validated.

    `policy` is "latest" (the newest `num_latest` versions), "all" or "specific"
    (exactly `versions`); TF Serving's default is latest with one version.
    """

    name: str
    base_path: str
    policy: str = "latest"
    num_latest: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.name:
            raise ConfigError("model config: every model needs a `name`")
        if "/" in self.name or ":" in self.name:
            raise ConfigError(f"model config: model name {self.name!r} may not contain '/' or ':' (REST paths could not address it)")
        if not self.base_path:
            raise ConfigError(f"model config: model {self.name!r} needs a `base_path`")
        if self.policy not in ("latest", "all", "specific"):
            raise ConfigError(f"model config: model {self.name!r}: unknown version policy {self.policy!r}")
        if self.policy == "specific" and not self.versions:
            raise ConfigError(f"model config: model {self.name!r}: `specific` policy lists no versions")
        if self.policy == "latest" and self.num_latest < 1:
            raise ConfigError(f"model config: model {self.name!r}: latest.num_versions must be >= 1, got {self.num_latest}")
        for label, v in self.labels.items():
            if v < 0:
                raise ConfigError(f"model config: model {self.name!r}: label {label!r} points at negative version {v}")


def _from_proto(msg, where: str) -> list[ModelSpecConfig]:
    if msg.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{where}: no `model_config_list` (the dev server reads only that form)")
    out, seen = [], set()
    for c in msg.model_config_list.config:
        if c.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"{where}: model {c.name!r}: model_platform {c.model_platform!r} is not served (expected 'tensorflow')")
        choice = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        num = c.model_version_policy.latest.num_versions if choice == "latest" else 1
        spec = ModelSpecConfig(
            name=c.name,
            base_path=c.base_path,
            policy=choice,
            num_latest=num or 1,  # TF Serving: an unset/zero num_versions means 1
            versions=tuple(sorted(set(c.model_version_policy.specific.versions))),
            labels=dict(c.version_labels),
        )
        if spec.name in seen:
            raise ConfigError(f"{where}: model name {spec.name!r} appears twice")
        seen.add(spec.name)
        out.append(spec)
    if not out:
        raise ConfigError(f"{where}: model_config_list has no `config` entries")
    return out


def parse_model_config_text(text: str, where: str = "model config") -> list[ModelSpecConfig]:
    """Parses `ModelServerConfig` text-proto `text` into validated model specs."""
    msg = ModelServerConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ConfigError(f"{where}: {e}") from None
    return _from_proto(msg, where)


def read_model_config_file(path: str, rebase_models_dir: str | None = None) -> list[ModelSpecConfig]:
    """Reads TF Serving's `--model_config_file`.

    Relative base paths are relative to the working directory, as in TF Serving. With
    `rebase_models_dir`, a base path under `/models` (the `tensorflow/serving` image's
    `MODEL_BASE_PATH`, where `docker run -v HOST:/models` mounts the exports) is re-rooted
    at that local folder, so the file written for Docker also drives the dev server.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the model config file ({e.strerror})") from None
    specs = parse_model_config_text(text, where=path)
    if rebase_models_dir:
        fixed = []
        for s in specs:
            bp = s.base_path
            if bp == "/models" or bp.startswith("/models/"):
                bp = os.path.join(rebase_models_dir, bp[len("/models"):].lstrip("/"))
            fixed.append(dataclasses.replace(s, base_path=bp))
        specs = fixed
    return specs
