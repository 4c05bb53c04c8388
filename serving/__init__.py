"""BentoML service, prefix cache, registry loader and batch scorer (see DESIGN.md)."""
