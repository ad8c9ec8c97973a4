"""The plugin: Docker's remote-driver protocol on a unix socket, the admin API, and the
composition root that builds every other part.

    protocol.py    pydantic models with Docker's field names
    errors.py      one middleware turns every error into Docker's error shape
    handlers.py    thin: parse -> driver/ipam call -> render
    app.py         make_app(): the route table Docker calls
    admin.py       the admin API on admin.sock (status, peers, services, reconcile...)
    views.py       what the admin API shows, worked out from the parts
    settings.py    every setting: flag, environment variable, default, help
    prebound.py    the socket bound at the first instruction (dockerd's 12.5 s wait)
    handshake.py   the four calls answered before start-up is done (dockerd's 30 s wait)
    docker_api.py  the local dockerd, read only (service VIPs of swarm tasks)
    parts.py       what one running plugin is made of
    wiring.py      builds the parts; the only importer of the kernel adapters
    syncgate.py    what a restarting plugin waits for: pruning, IPAM claims
    background.py  peer syncs on table changes, the periodic reconciler
    server.py      `pyoverlay plugin`: start-up order, serve, signals
"""
