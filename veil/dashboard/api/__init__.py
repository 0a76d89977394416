"""The JSON API under C{/api/v1}: one module per resource."""
