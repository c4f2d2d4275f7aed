"""Internal wire formats and service-to-service APIs of the nearby mesh (not for apps)."""
