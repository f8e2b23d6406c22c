"""FSDI web service."""
