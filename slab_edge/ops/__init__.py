"""Stateless tensor functions: naive references, chunkwise and recurrent forms, optional fast kernels."""
