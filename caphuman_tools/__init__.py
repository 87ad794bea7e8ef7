"""Tools run beside the webui, never inside it: nothing in the extension imports this package."""
