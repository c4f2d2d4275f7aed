"""`python -m location_svc`: serve LocationService and LocationIngestService."""

from location_svc.app import LocationApp
from mesh.server import main

if __name__ == "__main__":
    main(LocationApp, lambda s: s.location_port)
