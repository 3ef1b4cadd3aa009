"""The controller's service: configuration, data directory, metrics and the composition
root of `serve`.
"""
