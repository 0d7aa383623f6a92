"""nginx at the edge: the staged, tested and atomically installed config, and the wrapper
that runs nginx's test and reload commands."""
