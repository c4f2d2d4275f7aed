"""Running the mesh locally: infrastructure processes, the stack launcher,
dev tokens, the Envoy config and the `nearby` command line."""
