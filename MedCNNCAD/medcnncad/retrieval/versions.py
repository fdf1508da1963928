"""The descriptor version (torch-free, so that opening a library does not import the network stack)."""

__all__ = ["DESCRIPTOR_VERSION"]

DESCRIPTOR_VERSION = "1"
"""Changes whenever a descriptor's definition changes; a library refuses descriptors of another version."""
