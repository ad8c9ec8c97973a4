"""Tiny servers and clients that kernel tests run in their namespaces (`python -c`).

SERVER answers each TCP connection on port 7000 and each UDP datagram on port 7053
with "<label> <the client's address as it saw it>"; the label is its first argument,
or the address it was reached on. The loops print one line per attempt: that answer,
or "refused", "lost" (UDP), "error ...".
"""

SERVER = """
import socket, sys, threading
label = sys.argv[1] if len(sys.argv) > 1 else ""
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7053))
def udp():
    while True:
        data, peer = u.recvfrom(100)
        u.sendto(f"{label or '-'} {peer[0]}".encode(), peer)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(64); print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{label or c.getsockname()[0]} {peer[0]}\\n".encode()); c.close()
"""
# bulk data from the client: each TCP connection on port 7001 is read to EOF, and
# answered with the number of bytes read
BULK_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7001)); s.listen(8); print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(60)
    got = 0
    try:
        while data := c.recv(65536):
            got += len(data)
        c.sendall(str(got).encode())
    except OSError:
        pass
    c.close()
"""
# argv: address, port, bytes to send; prints what the server says it read, or "error
# ..." (a stall is an error after 30 s without progress)
BULK_CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
    c.sendall(b"x" * int(sys.argv[3]))
    c.shutdown(socket.SHUT_WR)
    print(c.recv(100).decode() or "closed", flush=True)
except OSError as exc:
    print(f"error {exc}", flush=True)
"""
# argv: count, address, port
TCP_LOOP = """
import socket, sys
for _ in range(int(sys.argv[1])):
    try:
        c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3)
        print(c.makefile().readline().strip() or "closed", flush=True); c.close()
    except ConnectionRefusedError:
        print("refused", flush=True)
    except OSError as exc:
        print(f"error {exc}", flush=True)
"""
UDP_LOOP = """
import socket, sys
for _ in range(int(sys.argv[1])):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    u.sendto(b"hi", (sys.argv[2], int(sys.argv[3])))
    try:
        print(u.recv(100).decode(), flush=True)
    except OSError:
        print("lost", flush=True)
    u.close()
"""
