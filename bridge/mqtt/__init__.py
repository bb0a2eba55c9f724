"""The MQTT seam: the only package that uses paho-mqtt.

`link` is the bridge's broker session (what the rest of the bridge calls); `transport` runs
paho's client on the asyncio loop. Nothing outside this package imports paho in the runtime.
"""

from bridge.mqtt.link import BROKER_DROPPED, Inbound, LinkError, MqttLink

__all__ = ["BROKER_DROPPED", "Inbound", "LinkError", "MqttLink"]
