"""Loading language models and embedders, once per process, with clear errors."""
