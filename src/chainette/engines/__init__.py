"""Where prompts *go*: the engine contract, back-ends by name, lifecycle."""
