"""The public MQTT contract in one place: topics, payload models, the interval encoding,
the T7470 shapes the bridge republishes, and the JSON Schema and AsyncAPI documents made from them.
"""
