"""What the Open Inference Protocol says about the server and its models: server and model
metadata, Triton's model configuration and statistics, as protobuf messages (the REST side
renders the same messages as JSON).

A model is named as in detserve.v1 ("shapes" picks its default variant, "shapes@640" one
variant); its version is the manifest's. The configuration describes detserve's real settings:
`max_batch_size` and `dynamic_batching` are the model's batching config (preferred sizes, the
queue delay, the queue bound, and admission's queue-wait bound as the default queue timeout),
one instance group of `instances` engines, and the class names as the parameter `classes`.
"""

from __future__ import annotations

import importlib.metadata
import json

from detserve.protos import inference_pb2 as ip
from detserve.server.catalog import ModelView
from detserve.server.oip.outputs import DATATYPES, dims
from detserve.server.oip.statistics import Duration, ModelCounts
from detserve.server.oip.tensors import INPUT_NAME

SERVER_NAME = "detserve"
PLATFORM = "detserve"
# Triton's names for the protocol extensions detserve implements.
EXTENSIONS = ("model_configuration", "statistics", "binary_tensor_data", "parameters",
              "schedule_policy")
CONFIG_TYPES = {"BYTES": ip.TYPE_STRING, "UINT8": ip.TYPE_UINT8, "INT32": ip.TYPE_INT32,
                "FP32": ip.TYPE_FP32}
GPU_ENGINES = ("tensorrt", "torch-cuda")


def server_version() -> str:
    try:
        return importlib.metadata.version("detserve")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that is not installed
        return "unknown"


def server_metadata() -> ip.ServerMetadataResponse:
    return ip.ServerMetadataResponse(name=SERVER_NAME, version=server_version(),
                                     extensions=list(EXTENSIONS))


def _shown_name(asked: str, model: ModelView) -> str:
    """The name a reply carries: the caller's own (tools look their model up by it), or the
    served key when the caller named none."""
    return asked or model.key


def model_metadata(asked: str, model: ModelView) -> ip.ModelMetadataResponse:
    tensor = ip.ModelMetadataResponse.TensorMetadata
    return ip.ModelMetadataResponse(
        name=_shown_name(asked, model),
        versions=[model.manifest.version],
        platform=PLATFORM,
        inputs=[tensor(name=INPUT_NAME, datatype="BYTES", shape=[-1, 1])],
        outputs=[tensor(name=n, datatype=t, shape=[-1, *dims(n)]) for n, t in DATATYPES.items()],
    )


def _instance_kind(model: ModelView) -> ip.ModelInstanceGroup.Kind:
    providers = str(model.config.engine_options.get("providers", ""))
    on_gpu = model.engine_kind in GPU_ENGINES or "CUDA" in providers
    return ip.ModelInstanceGroup.KIND_GPU if on_gpu else ip.ModelInstanceGroup.KIND_CPU


def model_config(asked: str, model: ModelView) -> ip.ModelConfig:
    b = model.config.batching
    m = model.manifest
    post = m.postprocess
    queue = ip.ModelQueuePolicy(
        timeout_action=ip.ModelQueuePolicy.REJECT,
        default_timeout_microseconds=round((b.max_queue_wait_s or 0.0) * 1e6),
        allow_timeout_override=True,  # the `timeout` request parameter
        max_queue_size=b.max_queue_size,
    )
    facts = {
        "classes": json.dumps(list(m.classes)), "served_as": model.key,
        "engine": model.engine_kind, "precision": m.precision, "nms": m.nms,
        "input_size": f"{m.input_width}x{m.input_height}",
        "score_threshold": f"{post.score_threshold:g}", "iou_threshold": f"{post.iou_threshold:g}",
        "max_detections": str(post.max_detections),
    }
    return ip.ModelConfig(
        name=_shown_name(asked, model),
        platform=PLATFORM,
        backend=model.engine_kind,
        max_batch_size=b.max_batch_size,
        input=[ip.ModelInput(name=INPUT_NAME, data_type=ip.TYPE_STRING, dims=[1])],
        output=[ip.ModelOutput(name=n, data_type=CONFIG_TYPES[t], dims=list(dims(n)))
                for n, t in DATATYPES.items()],
        instance_group=[ip.ModelInstanceGroup(name=model.key, count=b.instances,
                                              kind=_instance_kind(model))],
        dynamic_batching=ip.ModelDynamicBatching(
            preferred_batch_size=list(b.preferred_batch_sizes),
            max_queue_delay_microseconds=round(b.max_queue_delay_s * 1e6),
            default_queue_policy=queue,
        ),
        parameters={k: ip.ModelParameter(string_value=v) for k, v in facts.items()},
        model_transaction_policy=ip.ModelTransactionPolicy(decoupled=False),
    )


def _duration(d: Duration) -> ip.StatisticDuration:
    return ip.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(name: str, model: ModelView, counts: ModelCounts) -> ip.ModelStatistics:
    stats = ip.InferStatistics(
        success=_duration(counts.success), fail=_duration(counts.fail),
        queue=_duration(counts.queue), compute_input=_duration(counts.compute_input),
        compute_infer=_duration(counts.compute_infer),
        compute_output=_duration(counts.compute_output),
    )
    batches = [
        ip.InferBatchStatistics(batch_size=size, compute_input=_duration(t.compute_input),
                                compute_infer=_duration(t.compute_infer),
                                compute_output=_duration(t.compute_output))
        for size, t in sorted(counts.batches.items())
    ]
    return ip.ModelStatistics(
        name=name, version=model.manifest.version, last_inference=counts.last_inference_ms,
        inference_count=counts.success.count, execution_count=counts.execution_count,
        inference_stats=stats, batch_stats=batches,
    )
