"""Protobuf <-> domain records: the only package that imports generated protobuf modules."""
