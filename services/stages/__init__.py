"""Ray Serve deployments: thin shims around the engine, the IBQ and the gateway lifecycle."""
