"""Block2 on the server side (RFC 7959 §2.4, §3.4): bodies kept once rendered, cut into blocks.

A response body larger than one block is kept as a `Representation` for BLOCK_LIFETIME seconds
(at most BLOCK_LIMIT of them, oldest dropped first), keyed by remote, method, path and query,
with an ETag, so the client's requests for the later blocks are served from it without calling
the handler again: a 10,000-session list (hundreds of KB) is rendered once, not once per block.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any, Final

from bridge.coapwire import BAD_OPTION, BLOCK2, CONTENT_FORMAT, ETAG, OBSERVE, SIZE2, block, uint
from bridge.sim.coap_request import Options, Response, small_uint

if TYPE_CHECKING:
    from bridge.sim.coap_observe import Observer

BLOCK_SZX: Final = 6  # 1024-byte blocks, the largest RFC 7959 allows over UDP
BLOCK_LIFETIME: Final = 30.0
BLOCK_LIMIT: Final = 32

Answer = tuple[int, Options, bytes]  # code, options, payload


class Representation:
    """A rendered body served block by block; `waiter` is released once its last block went."""

    __slots__ = ("code", "content_format", "etag", "expires", "payload", "waiter")

    def __init__(self, response: Response, etag: bytes) -> None:
        self.code = response.code
        self.payload = response.payload
        self.content_format = response.content_format
        self.etag = etag
        self.expires = time.monotonic() + BLOCK_LIFETIME
        self.waiter: Observer | None = None

    def cut(self, num: int, szx: int, observe: int | None) -> Answer:
        """Block `num` of size 16 << `szx`; block 0 also carries Size2 (and `observe`)."""
        payload = self.payload
        size = 16 << szx
        start = num * size
        if start >= len(payload):
            return BAD_OPTION, [], b"block out of range"
        more = start + size < len(payload)
        options = [(ETAG, self.etag)]
        if observe is not None:
            options.append((OBSERVE, uint(observe)))
        if self.content_format is not None:
            options.append((CONTENT_FORMAT, small_uint(self.content_format)))
        options.append((BLOCK2, block(num, more, szx)))
        if num == 0:
            options.append((SIZE2, uint(len(payload))))
        elif not more and self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.release(self)
        return self.code, options, payload[start : start + size]


class Blocks:
    """The short-lived cache of representations being transferred block-wise."""

    def __init__(self) -> None:
        self._kept: collections.OrderedDict[Any, Representation] = collections.OrderedDict()

    def keep(self, key: Any, response: Response, etag: bytes) -> Representation:
        """Keep `response`'s body under `key` (replacing what was there) with `etag`."""
        representation = Representation(response, etag)
        kept = self._kept
        kept.pop(key, None)
        kept[key] = representation
        while len(kept) > BLOCK_LIMIT:
            kept.popitem(last=False)
        return representation

    def get(self, key: Any) -> Representation | None:
        """The representation under `key`, unless it has expired."""
        representation = self._kept.get(key)
        if representation is None or representation.expires < time.monotonic():
            return None
        return representation

    def clear(self) -> None:
        self._kept.clear()
