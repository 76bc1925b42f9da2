"""The wire ceiling: raw loopback TCP moving the same bytes as a request and its response.

The server (``python -m bench.wire PORT``) reads a 16-byte header (bytes to receive, bytes to
send back), receives that many bytes, and answers with the other count. No parsing, no copies
beyond the kernel's: what is left of a call's time is the loopback transfer itself.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

CHUNK = 1 << 20
HEADER = struct.Struct("<QQ")


def _recv_exact(conn: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        n = conn.recv_into(buf[got:], min(CHUNK, len(buf) - got))
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def serve(port: int) -> None:
    sink = bytearray(CHUNK)
    with socket.create_server(("127.0.0.1", port)) as srv:
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                hdr = bytearray(HEADER.size)
                try:
                    while True:
                        _recv_exact(conn, memoryview(hdr))
                        n_in, n_out = HEADER.unpack(hdr)
                        left = n_in
                        while left:
                            left -= conn.recv_into(sink, min(CHUNK, left))
                        conn.sendall(bytes(n_out))
                except ConnectionError:
                    continue


def transfer_seconds(port: int, n_send: int, n_recv: int, reps: int) -> list[float]:
    """Seconds for each of ``reps`` round trips of n_send bytes out and n_recv bytes back."""
    payload = memoryview(bytes(n_send))
    back = memoryview(bytearray(max(n_recv, 1)))[:n_recv]
    times = []
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(reps):
            t0 = time.perf_counter()
            conn.sendall(HEADER.pack(n_send, n_recv))
            conn.sendall(payload)
            _recv_exact(conn, back)
            times.append(time.perf_counter() - t0)
    return times


if __name__ == "__main__":
    serve(int(sys.argv[1]))
