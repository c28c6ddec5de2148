"""How a pipeline *runs*: the async executor and the per-node runners."""
