"""Dataset adapters -> Responses, and the built-in synthetic demo."""
