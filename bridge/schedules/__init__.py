"""The Sensaphone feature: the schedule service, the Sensaphone client and its HTTP transport."""
