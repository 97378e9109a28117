"""The bottom layer: small helpers every other layer may use; they import nothing of tlkit but its errors."""
