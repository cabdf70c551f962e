"""LM-Cocktail-style mixing: weights from example data, and the α sweep."""
