"""emu35-serve services: model (pure torch), and later engine, rpc, storage, jobs, stages."""
