"""web: the HTTP edges: the OpenAI-compatible API, the request guard, visitor identity."""
