"""The wire format shared by the agent, the ESP32 stub and the control plane (DESIGN.md §2-3).

The contract is docs/protocol.md; tests/vectors/ holds the vectors both agents must pass.
"""
