"""gRPC server reflection over every service the server runs. Reflection answers from one
descriptor pool, and inference.proto (the Open Inference Protocol) is registered in a pool of its
own, not the default one (protos/generate.py: tritonclient defines the same package there), so
the default pool alone cannot describe `inference.GRPCInferenceService`. This builds one pool
holding the served services' files and the files they import."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as reflection_pb


def reflection_pool(files: Sequence[FileDescriptor]) -> DescriptorPool:
    """A new pool holding `files` and, before each, the files it imports (once each)."""
    pool = DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.AddSerializedFile(file.serialized_pb)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def enable_reflection(server: grpc.aio.Server, services: Sequence[ServiceDescriptor]) -> None:
    """Reflection on `server` listing `services` and itself, each described from its own file."""
    own = reflection_pb.DESCRIPTOR.services_by_name["ServerReflection"]
    served = (*services, own)
    pool = reflection_pool([s.file for s in served])
    reflection.enable_server_reflection([s.full_name for s in served], server, pool=pool)
