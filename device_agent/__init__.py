"""The on-device Fleet OTA agent: stdlib, paho-mqtt and cryptography only; never Django."""

AGENT_VERSION = "0.1.0"
