"""`register`, `deregister`: a service container's registration, kept alive while it runs."""
