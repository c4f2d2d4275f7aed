"""`python -m fanout_svc`: one fan-out replica (port: PORT, else FANOUT_PORT)."""

from fanout_svc.app import FanoutApp
from mesh.server import main

if __name__ == "__main__":
    main(FanoutApp, lambda s: s.fanout_port)
