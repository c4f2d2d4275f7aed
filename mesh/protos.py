"""Every nearby gRPC service, as the kernel registers them for reflection."""

from __future__ import annotations

from types import ModuleType

from google.protobuf.descriptor import ServiceDescriptor
from nearby.v1 import (
    friend_service_pb2,
    location_service_pb2,
    nearby_service_pb2,
    presence_service_pb2,
)

from mesh.internal.v1 import (
    friend_graph_service_pb2,
    location_ingest_service_pb2,
    presence_query_service_pb2,
)

_MODULES: tuple[ModuleType, ...] = (
    friend_service_pb2,
    location_service_pb2,
    presence_service_pb2,
    nearby_service_pb2,
    friend_graph_service_pb2,
    location_ingest_service_pb2,
    presence_query_service_pb2,
)


def all_services() -> list[ServiceDescriptor]:
    return [svc for mod in _MODULES for svc in mod.DESCRIPTOR.services_by_name.values()]


def all_service_names() -> list[str]:
    """Full names of every nearby service (public and internal)."""
    return [svc.full_name for svc in all_services()]


PUBLIC_PACKAGE = "nearby.v1"
INTERNAL_PACKAGE = "mesh.internal.v1"
