"""pagedc.testing: small reference decoders with a dense KV cache, for tests and examples."""
