"""The CoAP seam: the only package that uses aiocoap on the client side (the T7470 client)."""
