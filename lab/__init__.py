"""lab: the techniques lab: every adaptation technique on one task, measured side by side."""
