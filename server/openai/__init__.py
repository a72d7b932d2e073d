"""What the OpenAI-compatible API surfaces (`server/chat/`, `server/completions/`) share: SSE framing
(`sse`) and the request-level work around a generation (`serving`: following the client, running
choices together, the checks that need the model)."""
