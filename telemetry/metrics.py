"""Every Prometheus metric of the control plane (STYLE.md rule 7).

Names start with `fleet_`; label values come from small fixed sets and never carry a
device id. Bridge labels:

- `channel`: a `device_agent.protocol.topics.Channel` value, or `unknown` when the
  topic did not parse;
- `result`: `accepted`, `duplicate` (a redelivered event already stored), `dropped`
  (refused input) or `error` (the bridge failed on valid-looking input);
- `reason`: an `ErrorCode` value (`malformed`, `payload_too_large`, ...) or one of
  `unknown_device`, `revoked_device`, `topic_mismatch`, `backpressure`,
  `internal_error`.
"""

from prometheus_client import Counter, Gauge, Histogram

BRIDGE_MESSAGES = Counter(
    "fleet_bridge_messages_total",
    "Device messages the bridge took off MQTT, by channel and outcome.",
    ["channel", "result"],
)
BRIDGE_DROPPED = Counter(
    "fleet_bridge_dropped_total",
    "Device messages the bridge dropped, by channel and reason.",
    ["channel", "reason"],
)
BRIDGE_HANDLE_SECONDS = Histogram(
    "fleet_bridge_handle_seconds",
    "Time to validate one device message and hand it to its service.",
    ["channel"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
BRIDGE_QUEUE_MESSAGES = Gauge(
    "fleet_bridge_queue_messages",
    "Messages received from the broker and not yet handled (ingest lag).",
)
BRIDGE_ACKS_SKIPPED = Counter(
    "fleet_bridge_acks_skipped_total",
    "QoS 1 acknowledgements not sent because the connection that delivered the message "
    "is gone; the broker redelivers such messages and the stores are idempotent.",
)
BRIDGE_CONNECTED = Gauge(
    "fleet_bridge_connected",
    "1 while the bridge holds an MQTT session with the broker.",
)
BRIDGE_CONNECTS = Counter(
    "fleet_bridge_connects_total",
    "Successful MQTT connections of the bridge (the first one and every reconnect).",
)
BRIDGE_DESIRED_PUBLISHED = Counter(
    "fleet_bridge_desired_published_total",
    "Desired states the broker acknowledged and the outbox marked as published.",
)
BRIDGE_DESIRED_REFUSED = Counter(
    "fleet_bridge_desired_refused_total",
    "Desired-state publishes the broker refused (MQTT 5 PUBACK reason >= 0x80); retried later.",
)
BRIDGE_DESIRED_INFLIGHT = Gauge(
    "fleet_bridge_desired_inflight",
    "Desired-state publishes handed to the MQTT client and not yet acknowledged.",
)
