"""For development and the demo, not the runtime: a Mosquitto child process and `iotbridge demo`."""
