"""Built-in attack plugins: each module holds one, named after it."""
