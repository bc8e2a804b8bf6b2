"""Loading and validating data sets (embeddings, classifier outputs, question sets)."""
