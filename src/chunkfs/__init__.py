"""ChunkFS: a distributed storage cluster of metadata servers, chunk servers and clients."""

__version__ = "0.1.0"
