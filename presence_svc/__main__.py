"""`python -m presence_svc`: serve PresenceService and PresenceQueryService."""

from mesh.server import main
from presence_svc.app import PresenceApp

if __name__ == "__main__":
    main(PresenceApp, lambda s: s.presence_port)
