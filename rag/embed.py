def embed_dataset(*a, **k):
    return None
