"""friend_svc."""
