"""Training loops. They return a history and report through callbacks; they never log."""
