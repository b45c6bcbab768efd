"""Domains, the synthetic skill suite, the tokenizer and the mixture sampler."""
