"""What a run leaves on disk: metrics.json, predictions, reliability diagrams, tables."""
