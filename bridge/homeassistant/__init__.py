"""Home Assistant MQTT discovery: what is announced (`discovery`) and when (`announcer`)."""
