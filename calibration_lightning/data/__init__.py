"""Records -> prompts -> token batches."""
