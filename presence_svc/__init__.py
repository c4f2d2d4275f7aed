"""presence_svc."""
