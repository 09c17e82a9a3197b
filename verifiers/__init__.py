"""Built-in verifier plugins: each module holds one, named after it."""
