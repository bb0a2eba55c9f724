"""iotbridge: an MQTT bridge for LRS T7470 guest pagers and Sensaphone.net schedules."""

__version__ = "0.1.0"
