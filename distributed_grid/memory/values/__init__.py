"""Typed values under keys: numpy arrays, safetensors, pickled objects."""
