"""A tiny Django Channels chat app: the consumer a user would write, unchanged per backend."""
