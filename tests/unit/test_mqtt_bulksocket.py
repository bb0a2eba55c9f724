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
        # paho reads a packet as: first byte, remaining length, the rest; three packets here.
        right.sendall(b"\x40\x02\x00\x01" * 3)
        reads = [bulk.recv(size) for _ in range(3) for size in (1, 1, 2)]
        assert b"".join(reads) == b"\x40\x02\x00\x01" * 3
        assert counting.recvs == 1
        assert bulk.pending() == 0
        # paho writes each packet with its own send(); they leave together on flush().
        for n in range(4):
            assert bulk.send(bytes([0x40, 0x02, 0x00, n])) == 4
        assert counting.sends == 0
        assert bulk.flush()
        assert counting.sends == 1
        assert right.recv(100) == b"".join(bytes([0x40, 0x02, 0x00, n]) for n in range(4))


def test_a_closed_peer_reads_as_closed() -> None:
    left, right = socket.socketpair()
    with left:
        bulk = BulkSocket(left)
        right.close()
        assert bulk.recv(1) == b""
