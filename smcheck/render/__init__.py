"""Pure renderers: a report dataclass in, text (or a rich renderable) out. No I/O, no numerics."""
