"""`POST /v1/responses` and `GET /v1/responses/{id}`, OpenAI's Responses API for text and function
tools: its wire models (`protocol`), its serving (`serving`: the chat completion request it is, run by
the chat completions' serving, recorded as one episode), its stream's events (`sse`) and its routes
(`router`)."""
