"""Kernels for ``smcheck kernel``'s tests: correct ones, and one broken kernel per bug class,
each a few lines, each the bug a public kernel project once shipped."""
