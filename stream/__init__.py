"""legato.stream: frames, the streaming-module/state contract, state pools,
the engine (scheduler, budgets, metrics), graphs of stages, and audio I/O."""
