"""Services own transactions, clean-up and the in-memory state; handlers stay thin."""
