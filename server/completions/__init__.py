"""`POST /v1/completions` (OpenAI's legacy text completion): its wire models (`protocol`), its
serving (`serving`) and its route (`router`)."""
