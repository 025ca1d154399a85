"""Tasks, the common environment wrapper, reward wrappers and experts."""
