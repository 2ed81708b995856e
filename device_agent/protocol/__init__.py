"""The wire format shared by the agent, the ESP32 stub and the control plane (docs/protocol.md).

The contract is docs/protocol.md; tests/vectors/ holds the vectors both agents must pass.
"""
