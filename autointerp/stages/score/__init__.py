"""Score stage: the stage (stage.py), held-out sampling (sampling.py) and the scorers, one module each (scorers/)."""
