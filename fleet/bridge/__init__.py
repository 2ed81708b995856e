"""The MQTT bridge (`manage.py bridge`): the control plane's only MQTT client.

client.py   paho: persistent MQTT 5 session, shared subscriptions, manual acks
handlers.py decode and check one device message, call one of the registry's services
worker.py   the thread between paho and the database: batch, store, then acknowledge
outbox.py   publish the director's queued desired states, retained, QoS 1
runner.py   Bridge: the three threads wired together
services.py the services apps register for the bridge to call (device reports, the
            desired-state queue, the telemetry sink)
"""
