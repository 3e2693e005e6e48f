"""Pure decisions: from what a resource asks for and what is observed, the actions to take and the status to write."""
