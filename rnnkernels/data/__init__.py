"""Built-in data sets and file loaders for the training CLI."""
