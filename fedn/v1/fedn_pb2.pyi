from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_HEARTBEAT: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_UPLOAD_GRANT: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_HEARTBEAT: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_UPLOAD_GRANT: TaskKind
TASK_KIND_EVALUATE: TaskKind

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ConfigValue(_message.Message):
    __slots__ = ("double_value", "int_value", "string_value", "bool_value")
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    double_value: float
    int_value: int
    string_value: str
    bool_value: bool
    def __init__(self, double_value: _Optional[float] = ..., int_value: _Optional[int] = ..., string_value: _Optional[str] = ..., bool_value: bool = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("model_id", "tensors", "sha256", "payload_bytes")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    sha256: str
    payload_bytes: int
    def __init__(self, model_id: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., sha256: _Optional[str] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class TaskStreamRequest(_message.Message):
    __slots__ = ("client_id", "client_name", "codecs")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    client_name: str
    codecs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, client_id: _Optional[str] = ..., client_name: _Optional[str] = ..., codecs: _Optional[_Iterable[str]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "round_id", "session_id", "model_id", "config", "timeout_s", "round_index", "compression", "downlink_compression")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConfigValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    kind: TaskKind
    round_id: str
    session_id: str
    model_id: str
    config: _containers.MessageMap[str, ConfigValue]
    timeout_s: float
    round_index: int
    compression: str
    downlink_compression: str
    def __init__(self, kind: _Optional[_Union[TaskKind, str]] = ..., round_id: _Optional[str] = ..., session_id: _Optional[str] = ..., model_id: _Optional[str] = ..., config: _Optional[_Mapping[str, ConfigValue]] = ..., timeout_s: _Optional[float] = ..., round_index: _Optional[int] = ..., compression: _Optional[str] = ..., downlink_compression: _Optional[str] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("model_id", "client_id", "compression")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    client_id: str
    compression: str
    def __init__(self, model_id: _Optional[str] = ..., client_id: _Optional[str] = ..., compression: _Optional[str] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("round_id", "client_id", "base_model_id", "num_examples", "metrics", "model", "compression")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    client_id: str
    base_model_id: str
    num_examples: float
    metrics: _containers.ScalarMap[str, float]
    model: ModelHeader
    compression: str
    def __init__(self, round_id: _Optional[str] = ..., client_id: _Optional[str] = ..., base_model_id: _Optional[str] = ..., num_examples: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., model: _Optional[_Union[ModelHeader, _Mapping]] = ..., compression: _Optional[str] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("round_id", "client_id", "payload_bytes")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    client_id: str
    payload_bytes: int
    def __init__(self, round_id: _Optional[str] = ..., client_id: _Optional[str] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class UploadGrant(_message.Message):
    __slots__ = ("granted", "queued_before")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    queued_before: int
    def __init__(self, granted: bool = ..., queued_before: _Optional[int] = ...) -> None: ...

class UploadUpdateResponse(_message.Message):
    __slots__ = ("round_id", "accepted_updates")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    accepted_updates: int
    def __init__(self, round_id: _Optional[str] = ..., accepted_updates: _Optional[int] = ...) -> None: ...

class ReportFailureRequest(_message.Message):
    __slots__ = ("round_id", "client_id", "error")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    client_id: str
    error: str
    def __init__(self, round_id: _Optional[str] = ..., client_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ReportFailureResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("round_id", "client_id", "model_id", "loss", "num_examples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    client_id: str
    model_id: str
    loss: float
    num_examples: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, round_id: _Optional[str] = ..., client_id: _Optional[str] = ..., model_id: _Optional[str] = ..., loss: _Optional[float] = ..., num_examples: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvaluationReportResponse(_message.Message):
    __slots__ = ("accepted_evaluations",)
    ACCEPTED_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    accepted_evaluations: int
    def __init__(self, accepted_evaluations: _Optional[int] = ...) -> None: ...

class AbandonRoundRequest(_message.Message):
    __slots__ = ("round_id", "session_id", "reason")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    session_id: str
    reason: str
    def __init__(self, round_id: _Optional[str] = ..., session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AbandonRoundResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: bool = ...) -> None: ...

class RoundPlan(_message.Message):
    __slots__ = ("round_id", "session_id", "round_index", "model_id", "aggregator", "config", "timeout_s", "max_clients", "sample_seed", "aggregator_config", "mode", "buffer_size", "model_version", "staleness_exponent", "max_staleness", "model_sha256", "compression", "downlink_compression")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConfigValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ...) -> None: ...
    class AggregatorConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConfigValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SEED_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STALENESS_EXPONENT_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    session_id: str
    round_index: int
    model_id: str
    aggregator: str
    config: _containers.MessageMap[str, ConfigValue]
    timeout_s: float
    max_clients: int
    sample_seed: int
    aggregator_config: _containers.MessageMap[str, ConfigValue]
    mode: str
    buffer_size: int
    model_version: int
    staleness_exponent: float
    max_staleness: int
    model_sha256: str
    compression: str
    downlink_compression: str
    def __init__(self, round_id: _Optional[str] = ..., session_id: _Optional[str] = ..., round_index: _Optional[int] = ..., model_id: _Optional[str] = ..., aggregator: _Optional[str] = ..., config: _Optional[_Mapping[str, ConfigValue]] = ..., timeout_s: _Optional[float] = ..., max_clients: _Optional[int] = ..., sample_seed: _Optional[int] = ..., aggregator_config: _Optional[_Mapping[str, ConfigValue]] = ..., mode: _Optional[str] = ..., buffer_size: _Optional[int] = ..., model_version: _Optional[int] = ..., staleness_exponent: _Optional[float] = ..., max_staleness: _Optional[int] = ..., model_sha256: _Optional[str] = ..., compression: _Optional[str] = ..., downlink_compression: _Optional[str] = ...) -> None: ...

class ModelAnnouncement(_message.Message):
    __slots__ = ("session_id", "model_id", "model_version", "final", "model_sha256")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model_id: str
    model_version: int
    final: bool
    model_sha256: str
    def __init__(self, session_id: _Optional[str] = ..., model_id: _Optional[str] = ..., model_version: _Optional[int] = ..., final: bool = ..., model_sha256: _Optional[str] = ...) -> None: ...

class AnnounceModelResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: bool = ...) -> None: ...

class ClientFailure(_message.Message):
    __slots__ = ("client_id", "error")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    error: str
    def __init__(self, client_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class MetricSummary(_message.Message):
    __slots__ = ("mean", "min", "max", "count", "weight")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    mean: float
    min: float
    max: float
    count: int
    weight: float
    def __init__(self, mean: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., count: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class RoundResult(_message.Message):
    __slots__ = ("round_id", "combiner_id", "partial_key", "total_weight", "num_selected", "num_updates", "num_rejected", "failures", "metrics", "client_ids", "evaluations", "uplink_bytes")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetricSummary
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetricSummary, _Mapping]] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    COMBINER_ID_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_KEY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    NUM_SELECTED_FIELD_NUMBER: _ClassVar[int]
    NUM_UPDATES_FIELD_NUMBER: _ClassVar[int]
    NUM_REJECTED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    UPLINK_BYTES_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    combiner_id: str
    partial_key: str
    total_weight: float
    num_selected: int
    num_updates: int
    num_rejected: int
    failures: _containers.RepeatedCompositeFieldContainer[ClientFailure]
    metrics: _containers.MessageMap[str, MetricSummary]
    client_ids: _containers.RepeatedScalarFieldContainer[str]
    evaluations: _containers.RepeatedCompositeFieldContainer[ClientEvaluation]
    uplink_bytes: int
    def __init__(self, round_id: _Optional[str] = ..., combiner_id: _Optional[str] = ..., partial_key: _Optional[str] = ..., total_weight: _Optional[float] = ..., num_selected: _Optional[int] = ..., num_updates: _Optional[int] = ..., num_rejected: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[ClientFailure, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, MetricSummary]] = ..., client_ids: _Optional[_Iterable[str]] = ..., evaluations: _Optional[_Iterable[_Union[ClientEvaluation, _Mapping]]] = ..., uplink_bytes: _Optional[int] = ...) -> None: ...

class ClientEvaluation(_message.Message):
    __slots__ = ("client_id", "loss", "num_examples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    loss: float
    num_examples: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, client_id: _Optional[str] = ..., loss: _Optional[float] = ..., num_examples: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...
