"""The wire format shared by the agent, the ESP32 stub and the control plane (DESIGN.md §2-3)."""
