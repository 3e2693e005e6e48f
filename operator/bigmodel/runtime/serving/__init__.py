"""What runs in a Serve replica: the KServe-style HTTP protocol, the predictors and the Serve application."""
