"""arq job functions and worker settings (thin: the work is in gateway.sender)."""
