"""The T7470 feature: the pager service, session tracking, reading the device's replies
tolerantly, and the observer claim shared by replicas.
"""
