"""Score stage: the stage (stage.py), held-out sampling (sampling.py) and the scorers (scorers.py)."""
