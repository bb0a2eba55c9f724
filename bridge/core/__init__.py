"""The application core between the MQTT link and the features: routing, dispatch (order, fairness,
back-pressure, exactly one result), idempotency, the outbox, circuit breakers and supervision.
"""
