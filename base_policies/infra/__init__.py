"""The project's infrastructure: errors and one-line messages, crash-safe file I/O, declared
numeric ranges, run folders, the plug-in registry, devices and threads. Nothing here knows about
policies, tasks or methods."""
