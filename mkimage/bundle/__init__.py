"""Signed boot bundles: canonical JSON, a strict ustar container and the manifest model."""
