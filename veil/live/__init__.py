"""The live stream: request-log rows as they happen, for the dashboard."""
