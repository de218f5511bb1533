#!/usr/bin/env python3
"""Opens N WebSocket connections that complete the handshake and then never read
(a frozen browser tab) and holds them for SECONDS. Used by bench/run.sh's
slow-reader scenario (the server's own metric tells how many it closed); standard
library only.

usage: stalled_clients.py HOST PORT PATH N SECONDS
"""
import socket
import sys
import time


def main():
    host, port, path, count, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    socks = []
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=10)
        # A small receive buffer, as a busy phone's would have.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                sys.exit("server closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            sys.exit(f"upgrade refused: {head[:80]!r}")
        socks.append(s)
    print(f"{count} stalled clients connected", file=sys.stderr, flush=True)
    time.sleep(seconds)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
