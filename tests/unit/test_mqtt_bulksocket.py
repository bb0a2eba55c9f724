"""BulkSocket: paho's small reads served from one recv(), its sends written with one send()."""

from __future__ import annotations

import socket

from bridge.mqtt.transport import BulkSocket


class Counting:
    """A socket that counts the system calls paho's socket would have made."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = self.sends = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)

    def send(self, data: bytes | bytearray) -> int:
        self.sends += 1
        return self.sock.send(data)


def test_reads_and_writes_in_bulk() -> None:
    left, right = socket.socketpair()
    with left, right:
        counting = Counting(left)
        bulk = BulkSocket(counting)  # type: ignore[arg-type]
        # paho reads each packet as 1 byte, 1 byte, then the rest: three 4-byte reads here.
        right.sendall(b"abcd" * 3)
        reads = [bulk.recv(size) for _ in range(3) for size in (1, 1, 2)]
        assert b"".join(reads) == b"abcd" * 3
        assert counting.recvs == 1
        assert bulk.pending() == 0
        # paho writes each packet with its own send(); they leave together on flush().
        for chunk in (b"one", b"two", b"three", b"four"):
            assert bulk.send(chunk) == len(chunk)
        assert counting.sends == 0
        assert bulk.flush()
        assert counting.sends == 1
        assert right.recv(100) == b"onetwothreefour"


def test_a_closed_peer_reads_as_closed() -> None:
    left, right = socket.socketpair()
    with left:
        bulk = BulkSocket(left)
        right.close()
        assert bulk.recv(1) == b""
