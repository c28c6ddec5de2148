"""What a pipeline *is*: nodes, chains, templates and static checks."""
