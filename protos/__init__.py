"""The protobuf contract. ``python -m protos.generate`` writes the Python modules to clients/."""
