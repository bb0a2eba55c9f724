"""The T7470 simulator: the device's rules (`device`), its CoAP resources and server, on aiocoap."""
