"""nearby: Python SDK and generated gRPC stubs of the nearby Nearby Friends backend."""
