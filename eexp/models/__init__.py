"""Models made and converted by eexp: `init-model` (tiny models from scratch) and GGUF `export`."""
