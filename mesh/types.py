"""Type aliases used across the services."""

from __future__ import annotations

from typing import Any

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
"""The servicer context of any RPC."""
