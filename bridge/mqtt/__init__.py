"""The MQTT seam: the only package that uses paho-mqtt, and it knows nothing of the bridge's
contract (`names.Channels` is all it is told).

`link` is the bridge's broker session (what the rest of the bridge calls); `transport` runs
paho's client on the asyncio loop; `names` holds MQTT's rules for topic names and filters.
Nothing outside this package imports paho in the runtime.
"""
