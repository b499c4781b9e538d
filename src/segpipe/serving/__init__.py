"""serving: the web page and HTTP API that answer with the masks `predict` writes."""
