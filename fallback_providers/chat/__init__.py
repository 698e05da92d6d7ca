"""Alternate providers that implement the superapp_sdk capability Protocols."""
