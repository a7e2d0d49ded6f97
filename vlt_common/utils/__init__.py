"""Small utilities shared across VLT."""
