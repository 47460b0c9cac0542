from layers.memory.layer import InMemoryChannelLayer

__all__ = ["InMemoryChannelLayer"]
