"""Code that runs inside the Ray cluster: built-in tasks, checkpoints, exported models, the train driver."""
