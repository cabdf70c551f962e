"""Reading checkpoints and writing outputs: safetensors headers, lazy checkpoints, staged output folders, the shard writer, side files and the model card, safe YAML/JSON input."""
