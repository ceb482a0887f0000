"""The offline miniature world: tiny models and data that need no download."""
