"""legato.server: WebSocket and gRPC front ends over one engine (later issues)."""
