"""The on-device Fleet OTA agent: stdlib, paho-mqtt and cryptography only; never Django."""
