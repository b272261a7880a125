"""Data sources that need no download (torch-free): text corpora and tokenizers for the language models."""
