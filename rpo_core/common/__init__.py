"""The bottom layer: records and small helpers every package may import. Nothing here imports the project."""
