"""`POST /v1/chat/completions`: its wire models (`protocol`), its serving (`serving`: one request,
generated, reflected on and retried while a verifier says no, recorded as one episode per choice),
its SSE chunks (`sse`), its responses (`responses`) and its route (`router`)."""
