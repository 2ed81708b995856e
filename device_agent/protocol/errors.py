"""Stable error codes (docs/protocol.md, Error codes).

API errors, agent events and the ESP32 stub all use these strings; they are part of
the contract, so a code is never renamed, only added.
"""

from enum import StrEnum


class ErrorCode(StrEnum):
    SIGNATURE_INVALID = "signature_invalid"
    THRESHOLD_NOT_MET = "threshold_not_met"
    HASH_MISMATCH = "hash_mismatch"
    LENGTH_EXCEEDED = "length_exceeded"
    METADATA_EXPIRED = "metadata_expired"
    METADATA_TOO_LARGE = "metadata_too_large"
    ROLLBACK_DETECTED = "rollback_detected"
    DOWNGRADE_REFUSED = "downgrade_refused"
    VERSION_MISMATCH = "version_mismatch"
    HW_MISMATCH = "hw_mismatch"
    WRONG_DEVICE = "wrong_device"
    REPLAYED_COMMAND = "replayed_command"
    COMMAND_EXPIRED = "command_expired"
    # A desired state issued further ahead of the device's clock than it allows
    # (max_issued_ahead_s); the agent tries it again as its clock moves on.
    ISSUED_IN_FUTURE = "issued_in_future"
    DIRECTOR_IMAGE_MISMATCH = "director_image_mismatch"
    INVALID_TARGET_PATH = "invalid_target_path"
    DOWNLOAD_FAILED = "download_failed"
    DOWNLOAD_TIMEOUT = "download_timeout"
    DISK_FULL = "disk_full"
    HEALTH_CHECK_FAILED = "health_check_failed"
    COMMIT_TIMEOUT = "commit_timeout"
    VERSION_EXISTS = "version_exists"
    INVALID_VERSION = "invalid_version"
    UNKNOWN_MODEL = "unknown_model"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MALFORMED = "malformed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    # Added by the control plane (docs/api.md): a concurrent writer changed the
    # metadata this request was built on; refetch and retry.
    CONFLICT = "conflict"
    # Added by the control plane: the requested object does not exist.
    NOT_FOUND = "not_found"
    # Added by the control plane: a rollout's selection matches no device.
    EMPTY_SELECTION = "empty_selection"
    # Added by the control plane: the API token's expiry has passed (HTTP 401); an
    # operator makes a new one.
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code, not a secret
    # An identifier (model name, hardware, device id, group or tag name, rollout id...)
    # outside its alphabet (device_agent/protocol/identifiers.py, docs/api.md).
    INVALID_IDENTIFIER = "invalid_identifier"
    # Added by the control plane: the HTTP method is not allowed on this path.
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # Added by the control plane: too many requests; retry after the Retry-After header.
    THROTTLED = "throttled"
    # Added by the control plane: a server fault (HTTP 5xx); the request may be retried.
    INTERNAL = "internal"
