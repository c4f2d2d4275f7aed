"""location_svc."""
