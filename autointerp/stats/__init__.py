"""Statistics shared by the stages: intervals and tests, saturation estimators, label embeddings."""
