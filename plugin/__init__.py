"""The HTTP boundary: Docker's remote-driver protocol on a unix socket.

protocol.py  pydantic models with Docker's field names
errors.py    one middleware turns every error into Docker's error shape
handlers.py  thin: parse -> driver/ipam service call -> render
app.py       make_app(): the route table
server.py    `pyoverlay plugin`: settings, logging, state, reconcile, serve
"""
