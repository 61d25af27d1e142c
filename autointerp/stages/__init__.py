"""The stages after the gather, each reading and writing the store: explain, score, saturate, estimate."""
