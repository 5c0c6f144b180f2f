"""The symbolic side of NeSy Studio: entries, their store, interchange, index and graph (no torch here)."""
