"""Where images and their embeddings live: the `VectorStore` seam and its backends (FAISS embedded, Milvus)."""
