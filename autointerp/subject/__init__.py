"""The subject of study: the model read at a hookpoint, SAE formats, releases, training, steering, output effects."""
